"""Shortcut benchmark: does the model learn the screen instead of the nodule? (prints a table)

    python benchmarks/shortcuts.py [--epochs 20] [--size 128] [--shortcuts 1.0]

Two phantoms with real scanner layouts: a confounded one (`shortcuts`: calipers on most
malignant nodules, "TR4/TR5" burned in, a scanner preset tied to the class) to train on,
and an unconfounded one (shortcuts 0, other patients) to test on. For each preprocessing,
ResNet18 from random init trains on the confounded set's split 0 and is tested on its
held-out confounded patients (AUC_conf) and on the whole unconfounded set (AUC_clean).
A model that learned the screen loses AUC on the clean set: the drop AUC_conf - AUC_clean
measures it (goal with field crop + mark suppression: <= 0.02). cam_in_field is the
Grad-CAM's share of mass on the true scan field of the clean images (goal: median >= 0.95).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pandas as pd

ARMS = {"study": "study", "field": "field", "field-marks": "field-marks", "robust": "robust"}


def evaluate_external(run: str, manifest: pd.DataFrame, batch: int = 64) -> tuple[float, np.ndarray]:
    """AUC and per-image cam_in_field (true field masks) of a saved run on another data set."""
    from sklearn.metrics import roc_auc_score

    from thyro.explain.cam_analysis import _decode, _mask
    from thyro.image.geometry import original_mask_to_model
    from thyro.image.transforms import preprocess_batch
    from thyro.model.predictor import Predictor, cam_in_field

    pr = Predictor(run, precision="bf16", cam_size=56)
    probs, cif = [], []
    for i in range(0, len(manifest), batch):
        rows = manifest.iloc[i:i + batch]
        decoded = [_decode(p, pr.preset.frame) for p in rows["path"]]
        crops = [pr.crop(img, reg) for img, reg in decoded]
        out = pr.predict_tensor(preprocess_batch([c.image for c in crops], pr.preset))
        probs.append(out.prob_malignant)
        for k, (c, (img, _)) in enumerate(zip(crops, decoded)):
            field = original_mask_to_model(_mask(rows["field_mask_path"].iloc[k], img.shape[:2]), c.geometry(pr.preset))
            cif.append(cam_in_field(out.cam_model[k], field))
    return float(roc_auc_score(manifest["label"], np.concatenate(probs))), np.array(cif)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-shortcuts")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--shortcuts", type=float, default=1.0)
    ap.add_argument("--n", type=int, nargs=2, default=(415, 93), metavar=("BENIGN", "MALIGNANT"))
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    args = ap.parse_args()
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    from thyro.config import load_config
    from thyro.data import phantom
    from thyro.data.manifest import load_manifest
    from thyro.model import checkpoint
    from thyro.model.training import train_run

    conf_dir, clean_dir = os.path.join(args.out, "confounded"), os.path.join(args.out, "clean")
    for d, seed, sc in ((conf_dir, 0, args.shortcuts), (clean_dir, 1, 0.0)):
        if not os.path.exists(os.path.join(d, "manifest.csv")):
            phantom.generate(d, n_benign=args.n[0], n_malignant=args.n[1], size=256, seed=seed,
                             layout="scanner", shortcuts=sc)
    clean = load_manifest(os.path.join(clean_dir, "manifest.csv"))
    conf = pd.read_csv(os.path.join(conf_dir, "manifest.csv"))
    for col in ("calipers",):
        by = conf.groupby("label")[col].mean()
        print(f"confounded set: {col} on {by.get('malignant', 0):.0%} of malignant, {by.get('benign', 0):.0%} of benign")
    rows = []
    for arm in args.arms.split(","):
        run = os.path.join(args.out, "runs", arm)
        t0 = time.perf_counter()
        cfg = load_config(None, [{"name": f"shortcuts-{arm}", "data": {"source": conf_dir},
                                  "preprocess": {"preset": ARMS[arm], "image_size": args.size},
                                  "train": {"epochs": args.epochs, "precision": "bf16", "channels_last": True},
                                  "split": {"n_repeats": 1, "repeat": 0}, "eval": {"bootstrap": 0}}])
        if not checkpoint.is_complete(run):
            train_run(cfg, run, log=lambda s: None)
        auc_conf = checkpoint.load_card(run)["metrics"]["auc"]
        auc_clean, cif = evaluate_external(run, clean)
        rows.append({"preprocessing": arm, "auc_confounded": auc_conf, "auc_clean": auc_clean,
                     "drop": auc_conf - auc_clean, "median_cam_in_field": float(np.nanmedian(cif)),
                     "share_cam_in_field_ge_0.95": float(np.mean(cif >= 0.95)),
                     "minutes": (time.perf_counter() - t0) / 60})
        print(f"  {arm}: done in {rows[-1]['minutes']:.1f} min", flush=True)
    df = pd.DataFrame(rows)
    print(f"\ntrain: confounded phantom (shortcuts {args.shortcuts}), test: its held-out patients (AUC_conf) and "
          f"an unconfounded phantom of other patients (AUC_clean); ResNet18 random init, {args.size} px, "
          f"{args.epochs} epochs")
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    df.to_csv(os.path.join(args.out, "shortcuts.csv"), index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
