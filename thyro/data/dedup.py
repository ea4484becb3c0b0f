"""Group near-duplicate images, for data sets without patient ids.

Public ultrasound sets (BUSI: 780 images of 600 patients, no ids) hold several
frames of one lesion, often re-saved or resized. Splitting such images at
random puts near-copies on both sides and flatters every figure. Images whose
256-bit difference hashes (`thyro.data.splits._dhash`) lie within `near_bits` of
each other are joined (transitively: single linkage) into one pseudo-patient.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist


def hashes(paths: list[str], read_bytes: Callable[[str], bytes], decode: Callable) -> np.ndarray:
    """(N, 256) bool difference hashes of the images."""
    from thyro.data.splits import _dhash

    return np.stack([_dhash(decode(read_bytes(p), p)) for p in paths])


def near_duplicate_groups(h: np.ndarray, near_bits: int = 12) -> np.ndarray:
    """Group labels (0..G-1): images chained by Hamming distances <= near_bits share a group."""
    if len(h) < 2:
        return np.zeros(len(h), int)
    d = pdist(h, metric="hamming") * h.shape[1]  # bits that differ
    return fcluster(linkage(d, method="single"), t=near_bits + 0.5, criterion="distance") - 1


def with_pseudo_patients(manifest: pd.DataFrame, read_bytes: Callable[[str], bytes], decode: Callable,
                         near_bits: int = 12) -> pd.DataFrame:
    """The manifest with `patient_id` replaced by near-duplicate groups ("dup0001", ...)."""
    g = near_duplicate_groups(hashes(manifest["path"].tolist(), read_bytes, decode), near_bits)
    out = manifest.copy()
    out["patient_id"] = [f"dup{k:05d}" for k in g]
    return out
