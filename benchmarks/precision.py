"""bf16 autocast vs fp32: same data, split, seed and epochs; prints AUC and img/s of each.

    python benchmarks/precision.py [--config configs/default.yaml] [--splits 0 1]

The deciding figures for making bf16 a default: its speed-up, and whether the
test AUC moves by more than the split-to-split noise.
"""

import argparse
import tempfile

from thyro.config import load_config, parse_override
from thyro.model.training import train_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--splits", type=int, nargs="+", default=[0])
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    rows = []
    for split in args.splits:
        for precision, cl in (("fp32", False), ("bf16", True)):
            cfg = load_config(args.config, [parse_override(s) for s in args.set] + [
                {"train": {"precision": precision, "channels_last": cl}, "split": {"repeat": split},
                 "eval": {"bootstrap": 0}}])
            speeds = []
            with tempfile.TemporaryDirectory() as out:
                res = train_run(cfg, out, on_epoch=lambda e, r: speeds.append(r["train_images_per_s"]),
                                log=lambda s: None)
            rows.append((split, precision, res.metrics["auc"], sum(speeds[1:]) / max(len(speeds) - 1, 1), res.seconds))
            print(f"split {split} {precision:<5} auc {rows[-1][2]:.3f}  train {rows[-1][3]:.0f} img/s  "
                  f"wall {rows[-1][4]:.0f}s", flush=True)
    for split in args.splits:
        f, b = [r for r in rows if r[0] == split]
        print(f"split {split}: bf16/fp32 speed {b[3] / f[3]:.2f}x, AUC difference {b[2] - f[2]:+.3f}")


if __name__ == "__main__":
    main()
