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


def _patient_labels(manifest: pd.DataFrame) -> pd.Series:
    """Label of each patient (malignant if any of their images is), indexed by sorted patient id."""
    return manifest.groupby("patient_id", sort=True)["label"].max()


def make_splits(manifest: pd.DataFrame, n_repeats: int = 10, test_size: float = 0.3,
                seed: int = 0, dev_fraction: float = 0.0) -> pd.DataFrame:
    """-> DataFrame[image_id, patient_id, label, repeat, subset('train'|'test'|'dev')].

    With `dev_fraction` > 0 a development set of patients (for hyperparameter
    search) is drawn first and excluded from every test split, so the search
    never sees a patient it is later scored on; dev patients train in every
    repetition. `test_size` stays a fraction of all patients.
    """
    patients = _patient_labels(manifest)
    if patients.value_counts().min() < 2:
        raise ValueError("each class needs at least two patients to split")
    if not 0.0 <= dev_fraction < 0.5:
        raise ValueError(f"dev_fraction must be in [0, 0.5), got {dev_fraction}")
    pid = patients.index.to_numpy()
    dev = np.array([], dtype=pid.dtype)
    pool = np.arange(len(pid))
    test_n = test_size
    if dev_fraction > 0:
        n_dev = int(np.ceil(dev_fraction * len(pid)))
        if n_dev < patients.nunique():
            raise ValueError(f"dev_fraction {dev_fraction} of {len(pid)} patients is too few development "
                             "patients to hold one of each class")
        draw = StratifiedShuffleSplit(n_splits=1, test_size=n_dev, random_state=seed)
        pool, dev_idx = next(draw.split(pid, patients.to_numpy()))
        dev = pid[dev_idx]
        test_n = int(np.ceil(test_size * len(pid)))
        if test_n >= len(pool):
            raise ValueError(f"test_size {test_size} + dev_fraction {dev_fraction} leave no training patients "
                             f"outside the development set ({len(pid)} patients)")
    sss = StratifiedShuffleSplit(n_splits=n_repeats, test_size=test_n, random_state=seed)
    out = []
    for rep, (_, test_idx) in enumerate(sss.split(pid[pool], patients.to_numpy()[pool])):
        test_patients = set(pid[pool][test_idx])
        subset = np.where(manifest["patient_id"].isin(test_patients), "test", "train")
        subset = np.where(manifest["patient_id"].isin(dev), "dev", subset)
        out.append(pd.DataFrame({"image_id": manifest["image_id"], "patient_id": manifest["patient_id"],
                                 "label": manifest["label"], "repeat": rep, "subset": subset}))
    return pd.concat(out, ignore_index=True)


def _subsets(splits: pd.DataFrame, manifest: pd.DataFrame, repeat: int) -> pd.Series:
    s = splits[splits["repeat"] == repeat]
    if s.empty:
        raise ValueError(f"split repetition {repeat} not in the split table "
                         f"(has {sorted(splits['repeat'].unique())})")
    subset = manifest["image_id"].map(dict(zip(s["image_id"], s["subset"])))
    if subset.isna().any():
        raise ValueError(f"image {manifest['image_id'][subset.isna()].iloc[0]} is not in the split table")
    return subset


def split_indices(splits: pd.DataFrame, manifest: pd.DataFrame, repeat: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of `manifest` in the train and test subsets of one repetition (dev rows train)."""
    subset = _subsets(splits, manifest, repeat)
    return np.flatnonzero(subset.isin(["train", "dev"])), np.flatnonzero(subset == "test")


def dev_indices(splits: pd.DataFrame, manifest: pd.DataFrame) -> np.ndarray:
    """Row positions of `manifest` in the development set (the same in every repetition)."""
    return np.flatnonzero(_subsets(splits, manifest, int(splits["repeat"].min())) == "dev")


def calibration_split(manifest: pd.DataFrame, train_idx: np.ndarray, fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold back about `fraction` of the training patients for calibration -> (fit_idx, cal_idx).

    Patient-grouped and stratified by patient label; each class gives at least
    one patient to each side when it has two. Both are row positions into `manifest`.
    """
    train_idx = np.asarray(train_idx, dtype=int)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"calibration fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return train_idx, np.array([], dtype=int)
    patients = _patient_labels(manifest.iloc[train_idx])
    rng = np.random.default_rng(seed)
    cal_patients = []
    for label in (0, 1):
        ids = patients.index[patients == label].to_numpy()
        k = int(round(fraction * len(ids)))
        if len(ids) >= 2:
            k = min(max(k, 1), len(ids) - 1)
        cal_patients.extend(rng.permutation(ids)[:k])
    is_cal = manifest["patient_id"].iloc[train_idx].isin(cal_patients).to_numpy()
    return train_idx[~is_cal], train_idx[is_cal]


def _dhash(img: np.ndarray, size: int = 16) -> np.ndarray:
    """Difference hash of a canonical image (size*size bits): robust to rescaling and re-encoding."""
    from PIL import Image

    g = Image.fromarray(img).convert("L").resize((size + 1, size), Image.BILINEAR)
    a = np.asarray(g, dtype=np.int16)
    return (a[:, 1:] > a[:, :-1]).flatten()


def image_hashes(data: bytes, img: np.ndarray) -> tuple[str, np.ndarray]:
    """(sha256 of the file's bytes, difference hash of its decoded first frame): what
    `leakage_report` compares."""
    return hashlib.sha256(data).hexdigest(), _dhash(img)


def leakage_report(manifest: pd.DataFrame, train_idx: np.ndarray, test_idx: np.ndarray,
                   read_bytes, decode, near_bits: int = 12, known: dict | None = None) -> dict:
    """Find what ties test images to training images.

    - the same patient on both sides (should never happen with `make_splits`);
    - byte-identical files (sha256);
    - near-duplicates: 256-bit difference hashes within `near_bits` bits (a re-saved
      or resized copy of the same frame).

    `known`: path -> `image_hashes` made earlier (the crop cache keeps them); other
    files are read and decoded here.
    """
    pt_train = set(manifest["patient_id"].iloc[train_idx])
    shared_patients = sorted(set(manifest["patient_id"].iloc[test_idx]) & pt_train)
    sha, dh = {}, {}
    known = known or {}
    for i in np.concatenate([train_idx, test_idx]):
        path = manifest["path"].iloc[i]
        if path in known:
            sha[i], dh[i] = known[path]
        else:
            data = read_bytes(path)
            sha[i], dh[i] = image_hashes(data, decode(data, path))
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
