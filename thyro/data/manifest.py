"""Data set manifests: which image, which class, which patient.

Two layouts are accepted, local or on any fsspec URI (s3://...):

- a folder with one subfolder per class (`benign/`, `malignant/`, any case),
  images found recursively below each;
- a CSV with columns `path,label[,patient_id]`, paths relative to the CSV, or a
  folder holding one as `manifest.csv` (what `thyro phantom` writes).

Both become one DataFrame with columns `image_id, path, label, patient_id`
(+ `mask_path` when the CSV has it). `label` is 0 (benign) or 1 (malignant).
Without patient ids every image counts as its own patient, as in the study.
"""

from __future__ import annotations

import posixpath

import fsspec
from fsspec.implementations.local import LocalFileSystem
import pandas as pd

CLASSES = ("benign", "malignant")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
_LABELS = {"benign": 0, "malignant": 1, "0": 0, "1": 1}


class ManifestError(ValueError):
    """A data set description is unusable; the message names the file or folder."""


def parse_label(value, where: str) -> int:
    key = str(value).strip().lower()
    if key.endswith(".0"):
        key = key[:-2]
    if key not in _LABELS:
        raise ManifestError(f"{where}: unknown label {value!r} (expected benign/malignant or 0/1)")
    return _LABELS[key]


def _join(base: str, rel: str) -> str:
    if "://" in rel or rel.startswith("/"):
        return rel
    return posixpath.normpath(posixpath.join(base, rel)) if "://" not in base else f"{base.rstrip('/')}/{rel}"


def _from_csv(fs, uri: str, protocol_prefix: str) -> pd.DataFrame:
    with fs.open(uri, "r") as f:
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise ManifestError(f"{protocol_prefix}{uri}: missing column(s) {sorted(missing)}; "
                            "expected path,label[,patient_id]")
    if df.empty:
        raise ManifestError(f"{protocol_prefix}{uri}: no rows")
    base = posixpath.dirname(uri)
    rows = []
    for i, r in enumerate(df.itertuples(index=False), start=2):  # line 1 is the header
        where = f"{protocol_prefix}{uri} line {i} ({r.path})"
        if not r.path:
            raise ManifestError(f"{protocol_prefix}{uri} line {i}: empty path")
        rows.append({
            "image_id": r.path,
            "path": protocol_prefix + _join(base, r.path),
            "label": parse_label(r.label, where),
            "patient_id": (getattr(r, "patient_id", "") or r.path),
            # true nodule mask and true scan-field mask (the phantom writes both)
            **{col: protocol_prefix + _join(base, getattr(r, col))
               for col in ("mask_path", "field_mask_path") if getattr(r, col, "")},
        })
    return pd.DataFrame(rows)


def _from_folder(fs, root: str, protocol_prefix: str) -> pd.DataFrame:
    rows = []
    for entry in sorted(fs.ls(root, detail=True), key=lambda e: e["name"]):
        name = posixpath.basename(entry["name"].rstrip("/"))
        if entry["type"] != "directory" or name.startswith("."):
            continue
        label = parse_label(name, f"{protocol_prefix}{entry['name']} (class folder)")
        for path in sorted(fs.find(entry["name"])):
            if path.lower().endswith(IMAGE_EXTENSIONS) and not posixpath.basename(path).startswith("."):
                rel = posixpath.relpath(path, root)
                rows.append({"image_id": rel, "path": protocol_prefix + path, "label": label,
                             "patient_id": rel})
    if not rows:
        raise ManifestError(f"{protocol_prefix}{root}: no images found under benign/ or malignant/ subfolders")
    return pd.DataFrame(rows)


def load_manifest(source: str, check_files: bool = True) -> pd.DataFrame:
    """Read a folder or CSV data set into the canonical manifest DataFrame."""
    fs, path = fsspec.core.url_to_fs(source)
    # Local paths stay plain; remote ones keep their scheme ("s3://") so any
    # worker can open them with fsspec.
    prefix = "" if isinstance(fs, LocalFileSystem) else f"{source.split('://')[0]}://"
    if not fs.exists(path):
        raise ManifestError(f"{source}: data set not found")
    if fs.isdir(path) and fs.isfile(posixpath.join(path, "manifest.csv")):
        path = posixpath.join(path, "manifest.csv")  # e.g. `thyro phantom --out DIR`: DIR is a data set
    df = _from_folder(fs, path, prefix) if fs.isdir(path) else _from_csv(fs, path, prefix)
    if df["label"].nunique() < 2:
        raise ManifestError(f"{source}: needs images of both classes, found only {CLASSES[df['label'].iloc[0]]}")
    dup = df["path"][df["path"].duplicated()]
    if len(dup):
        raise ManifestError(f"{source}: image listed twice: {dup.iloc[0]}")
    if check_files and not prefix:
        missing = [p for p in df["path"] if not fs.exists(p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ManifestError(f"{source}: image file not found: {missing[0]}{more}")
    return df.reset_index(drop=True)
