"""Real-data benchmark: the preprocessing ablation on real ultrasound (prints a table).

    python benchmarks/real_data.py --data ../shared/data/busi [--splits 5] [--epochs 30] [--size 128]

Rows (each adds to the one above): the study preset as published (whole screen squashed
to a square); + scan-field crop and letterbox; + annotation-mark suppression; the
`robust` training preset (random crops inside the field, gain/contrast/gamma jitter,
speckle-like noise, AdamW with cosine schedule and warm-up, EMA of the weights).
ResNet18 from random init, bf16 on CPU. The data has no patient ids: near-duplicates
(256-bit dHash within 12 bits, single linkage) form pseudo-patients, and the splits are
grouped by them. Columns: mean test AUC with the Nadeau-Bengio corrected 95% interval
over splits; test specificity (and sensitivity) at the threshold chosen on held-back
training patients for sensitivity >= 0.9; ECE before/after temperature scaling; median
cam_in_field (share of the Grad-CAM mass on the detected scan field). Runs are kept in
--out and reused when the command is run again. Not a test: it takes about an hour here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd

ARMS = {
    "study": {"preprocess": {"preset": "study"}},
    "+field": {"preprocess": {"preset": "field"}},
    "+marks": {"preprocess": {"preset": "field-marks"}},
    "robust": {"preprocess": {"preset": "robust"},
               "train": {"optimizer": "adamw", "schedule": "cosine", "warmup_epochs": 2, "lr": 3e-4,
                         "weight_decay": 0.05, "ema_decay": 0.99}},
}


def base_config(name: str, data: str, size: int, epochs: int, n_splits: int, k: int,
                target_sensitivity: float) -> dict:
    """The protocol every arm shares: ResNet18, 32 per batch, bf16 + channels_last, split k of
    `n_splits` grouped splits, 20% of the training patients held back for the threshold."""
    return {"name": name, "data": {"source": data},
            "preprocess": {"image_size": size},
            "train": {"epochs": epochs, "batch_size": 32, "precision": "bf16", "channels_last": True},
            "split": {"n_repeats": n_splits, "repeat": k},
            "eval": {"bootstrap": 0, "calibration_fraction": 0.2, "target_sensitivity": target_sensitivity}}


def run_arm(arm: str, overrides: dict, *, data: str, out: str, manifest: pd.DataFrame, splits: pd.DataFrame,
            n_splits: int, first_splits: int | None, epochs: int, size: int, target_sensitivity: float,
            table_only: bool = False, name: str | None = None, run_dirs: list[str] | None = None,
            log=None) -> dict | None:
    """Train (or reuse) one arm's runs in `out/<arm>/splitNN`, analyse their Grad-CAMs, and
    return its table row (None when no run is complete). `run_dirs[k]`, when given, is where
    split k's run lives instead (e.g. another benchmark's identical runs)."""
    from thyro.config import CamConfig, load_config
    from thyro.explain.cam_analysis import analyse_run
    from thyro.model import checkpoint
    from thyro.model.training import train_run
    from thyro.stats.metrics import corrected_interval

    log = log or (lambda s: print(s, flush=True))
    per = []
    t_arm = time.perf_counter()
    for k in range(first_splits or n_splits):
        run = run_dirs[k] if run_dirs else os.path.join(out, arm, f"split{k:02d}")
        base = base_config(name or f"real-{arm}", data, size, epochs, n_splits, k, target_sensitivity)
        cfg = load_config(None, [base, overrides])
        if table_only and not checkpoint.is_complete(run):
            continue
        if not checkpoint.is_complete(run):
            train_run(cfg, run, manifest=manifest, source=data, splits=splits, log=lambda s: None)
        m = json.loads(open(os.path.join(run, "metrics.json")).read())
        feats_path = os.path.join(run, "cam_features.csv")
        if not os.path.exists(feats_path):
            analyse_run(run, manifest, cam=CamConfig(faithfulness_images=0), size=56, precision="bf16")
        feats = pd.read_csv(feats_path)
        card = checkpoint.load_card(run)
        t = m["at_target_sensitivity"]
        per.append({"auc": m["auc"], "spec": t["specificity"], "sens": t["sensitivity"], "ece": m["ece"],
                    "ece_cal": m["ece_calibrated"], "cif": feats["cam_in_field"].to_numpy(),
                    "n_train": card["split"]["n_train"], "n_test": card["split"]["n_test"]})
        log(f"  {arm:<8} split {k}: AUC {m['auc']:.3f}  spec {t['specificity']:.3f} at sens "
            f"{t['sensitivity']:.3f}  median cam_in_field {np.nanmedian(per[-1]['cif']):.3f}")
    if not per:
        return None
    aucs = [p["auc"] for p in per]
    lo, hi = corrected_interval(aucs, int(np.mean([p["n_train"] for p in per])),
                                int(np.mean([p["n_test"] for p in per])))
    return {"arm": arm, "splits": len(per), "auc": np.mean(aucs), "lo": lo, "hi": hi, "aucs": aucs,
            "spec": np.mean([p["spec"] for p in per]), "sens": np.mean([p["sens"] for p in per]),
            "ece": np.mean([p["ece"] for p in per]), "ece_cal": np.mean([p["ece_cal"] for p in per]),
            "cif": float(np.nanmedian(np.concatenate([p["cif"] for p in per]))),
            "minutes": (time.perf_counter() - t_arm) / 60}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with benign/ malignant/ or a CSV manifest")
    ap.add_argument("--out", default="runs/bench-real")
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--table-only", action="store_true",
                    help="train nothing: the table over the runs already complete in --out")
    ap.add_argument("--first-splits", type=int, default=None,
                    help="run only the first K splits of the --splits table (a cheaper ablation row)")
    ap.add_argument("--target-sensitivity", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    args = ap.parse_args()
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import torch

    from thyro.data import storage
    from thyro.data.decode import decode
    from thyro.data.dedup import with_pseudo_patients
    from thyro.data.manifest import load_manifest
    from thyro.data.splits import make_splits

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    os.makedirs(args.out, exist_ok=True)
    cache = os.path.join(args.out, "manifest.parquet")
    if os.path.exists(cache):
        manifest = pd.read_parquet(cache)
    else:
        manifest = with_pseudo_patients(load_manifest(args.data), storage.read_bytes, decode)
        manifest.to_parquet(cache)
    splits = make_splits(manifest, args.splits, 0.3, 0)
    print(f"{len(manifest)} images ({int(manifest.label.sum())} malignant) in "
          f"{manifest.patient_id.nunique()} near-duplicate groups; {args.splits} grouped splits; "
          f"ResNet18 random init, {args.size} px, {args.epochs} epochs, bf16", flush=True)
    rows = []
    for arm in args.arms.split(","):
        row = run_arm(arm, ARMS[arm], data=args.data, out=args.out, manifest=manifest, splits=splits,
                      n_splits=args.splits, first_splits=args.first_splits, epochs=args.epochs, size=args.size,
                      target_sensitivity=args.target_sensitivity, table_only=args.table_only)
        if row is not None:
            rows.append(row)
    print(f"\n{'preprocessing':<10}{'splits':>7}{'mean AUC [corrected 95% CI]':>30}{'spec / sens at thr':>22}"
          f"{'ECE raw->cal':>16}{'median cam_in_field':>22}{'min':>6}")
    for r in rows:
        print(f"{r['arm']:<10}{r['splits']:>7}{r['auc']:>12.3f} [{r['lo']:.3f}, {r['hi']:.3f}]{r['spec']:>14.3f} / {r['sens']:.3f}"
              f"{r['ece']:>9.3f}->{r['ece_cal']:.3f}{r['cif']:>22.3f}{r['minutes']:>6.1f}")
    print(f"(threshold chosen on 20% of each split's training patients for sensitivity >= {args.target_sensitivity})")
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "aucs"} for r in rows])
    table.to_csv(os.path.join(args.out, "ablation.csv"), index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
