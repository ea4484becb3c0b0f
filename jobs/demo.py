"""README's first command: generate the phantom, train and evaluate ResNet18 on one split.

`python -m jobs.demo [--config configs/default.yaml] [--out runs/demo]`
"""

import argparse
import sys
import time

from thyro.cli import main

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--out", default="runs/demo")
    args, rest = ap.parse_known_args()
    t0 = time.perf_counter()
    rc = main(["train", "--config", args.config, "--out", args.out, *rest])
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; run folder: {args.out} "
          "(model.pt, metadata.json model card, metrics.json, predictions.csv)")
    sys.exit(rc)
