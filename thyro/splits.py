"""The study's evaluation protocol: repeated stratified 70/30 splits, grouped by patient.

Splits are data: `make_splits` returns one table (a row per image and
repetition) that is built once, saved, and read by every trial. Patients, not
images, are drawn, so a patient's images are never on both sides; the draw is
stratified by the patient's label (malignant if any of their images is).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedShuffleSplit


def make_splits(manifest: pd.DataFrame, n_repeats: int = 10, test_size: float = 0.3,
                seed: int = 0) -> pd.DataFrame:
    """-> DataFrame[image_id, patient_id, label, repeat, subset('train'|'test')]."""
    patients = manifest.groupby("patient_id", sort=True)["label"].max()
    if patients.value_counts().min() < 2:
        raise ValueError("each class needs at least two patients to split")
    sss = StratifiedShuffleSplit(n_splits=n_repeats, test_size=test_size, random_state=seed)
    pid = patients.index.to_numpy()
    out = []
    for rep, (_, test_idx) in enumerate(sss.split(pid, patients.to_numpy())):
        test_patients = set(pid[test_idx])
        subset = np.where(manifest["patient_id"].isin(test_patients), "test", "train")
        out.append(pd.DataFrame({"image_id": manifest["image_id"], "patient_id": manifest["patient_id"],
                                 "label": manifest["label"], "repeat": rep, "subset": subset}))
    return pd.concat(out, ignore_index=True)


def split_indices(splits: pd.DataFrame, manifest: pd.DataFrame, repeat: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of `manifest` in the train and test subsets of one repetition."""
    s = splits[splits["repeat"] == repeat]
    if s.empty:
        raise ValueError(f"split repetition {repeat} not in the split table "
                         f"(has {sorted(splits['repeat'].unique())})")
    subset = manifest["image_id"].map(dict(zip(s["image_id"], s["subset"])))
    if subset.isna().any():
        raise ValueError(f"image {manifest['image_id'][subset.isna()].iloc[0]} is not in the split table")
    return np.flatnonzero(subset == "train"), np.flatnonzero(subset == "test")


def _dhash(img: np.ndarray, size: int = 16) -> np.ndarray:
    """Difference hash of a canonical image (size*size bits): robust to rescaling and re-encoding."""
    from PIL import Image

    g = Image.fromarray(img).convert("L").resize((size + 1, size), Image.BILINEAR)
    a = np.asarray(g, dtype=np.int16)
    return (a[:, 1:] > a[:, :-1]).flatten()


def leakage_report(manifest: pd.DataFrame, train_idx: np.ndarray, test_idx: np.ndarray,
                   read_bytes, decode, near_bits: int = 12) -> dict:
    """Find what ties test images to training images.

    - the same patient on both sides (should never happen with `make_splits`);
    - byte-identical files (sha256);
    - near-duplicates: 256-bit difference hashes within `near_bits` bits (a re-saved
      or resized copy of the same frame).
    """
    pt_train = set(manifest["patient_id"].iloc[train_idx])
    shared_patients = sorted(set(manifest["patient_id"].iloc[test_idx]) & pt_train)
    sha, dh = {}, {}
    for i in np.concatenate([train_idx, test_idx]):
        data = read_bytes(manifest["path"].iloc[i])
        sha[i] = hashlib.sha256(data).hexdigest()
        dh[i] = _dhash(decode(data, manifest["path"].iloc[i]))
    train_sha = {}
    for i in train_idx:
        train_sha.setdefault(sha[i], i)
    identical = [(manifest["image_id"].iloc[j], manifest["image_id"].iloc[train_sha[sha[j]]])
                 for j in test_idx if sha[j] in train_sha]
    near = []
    if len(train_idx):
        train_h = np.stack([dh[i] for i in train_idx])
        for j in test_idx:
            d = (train_h != dh[j]).sum(1)  # Hamming distance to every training image at once
            k = int(np.argmin(d))
            if d[k] <= near_bits and sha[j] != sha[train_idx[k]]:
                near.append((manifest["image_id"].iloc[j], manifest["image_id"].iloc[train_idx[k]], int(d[k])))
    return {"shared_patients": shared_patients, "identical_images": identical,
            "near_duplicates": near,
            "clean": not (shared_patients or identical or near)}
