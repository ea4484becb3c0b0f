"""An experiment's inputs as data: the manifest and the split table, written once.

Every trial (and a resumed run) reads these files instead of re-deriving them,
so all trials see the same images and the same patient-grouped splits.
"""

from __future__ import annotations

import io
from typing import Callable

import pandas as pd

from thyro.config import Config
from thyro.data import storage


def read_parquet(uri: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def write_parquet(uri: str, df: pd.DataFrame) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    storage.write_bytes(uri, buf.getvalue())


def prepare_inputs(cfg: Config, out: str, log: Callable[[str], None] = print) -> tuple[str, str]:
    """Write manifest.parquet and splits.parquet under `out` once; reuse them on resume."""
    from thyro.data.splits import make_splits
    from thyro.model.training import resolve_manifest

    m_uri, s_uri = storage.join(out, "manifest.parquet"), storage.join(out, "splits.parquet")
    if storage.exists(m_uri) and storage.exists(s_uri):
        log(f"reusing the manifest and split table in {out}")
        return m_uri, s_uri
    manifest, source = resolve_manifest(cfg.data)
    # Workers may run elsewhere: no path may depend on the driver's directory.
    manifest["path"] = [storage.absolute(p) for p in manifest["path"]]
    for col in ("mask_path", "field_mask_path"):
        if col in manifest:
            manifest[col] = [storage.absolute(p) if isinstance(p, str) else p for p in manifest[col]]
    splits = make_splits(manifest, cfg.split.n_repeats, cfg.split.test_size, cfg.split.seed,
                         cfg.split.dev_fraction)
    write_parquet(m_uri, manifest)
    write_parquet(s_uri, splits)
    storage.write_bytes(storage.join(out, "data_source.txt"), str(source).encode())
    return m_uri, s_uri
