"""Every image's field crop, computed once per data set and preset, shared by all the trainings.

Each training crops every image of the manifest before its first epoch (decode, find
the field, inpaint marks: 8-9 ms an image on this project's CPU, single-threaded in the
data loader). An experiment of ten splits x four models did it forty times over the
same pixels; on a GPU node that pass is longer than the training itself. The crops are
deterministic given the file and the preset, so they are made once, stored losslessly
(PNG) beside the manifest, and each training starts from them.

Layout: `<dir>/<key of the preset's CROP_SETTINGS>/part-NNNNN.parquet`, one row per image that cropped, plus
`_COMPLETE` written last (the number of parts, a digest of the paths, the versions of
the code that made them): a cache without it, or made by other versions, is ignored,
so a run killed while building one never trains from half of it. An image that fails to
crop has no row; its training crops it again and fails there, naming the file, as
without a cache.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Iterable

import numpy as np

from thyro.data import storage
from thyro.data.decode import decode, read_source
from thyro.data.splits import image_hashes
from thyro.image.preprocess import CROP_SETTINGS, Cropped, crop_bytes
from thyro.image.preset import Preset

COMPLETE = "_COMPLETE"


def beside(manifest_uri: str) -> str:
    """Where a job keeps the crop caches of the images its manifest lists."""
    return storage.join(posixpath.dirname(manifest_uri), "crops")


def preset_key(preset: Preset) -> str:
    """A short name for the preset's crop settings (`CROP_SETTINGS`: a crop depends on those only)."""
    crop = {k: getattr(preset, k) for k in CROP_SETTINGS}
    return hashlib.sha256(json.dumps(crop, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir(base: str, preset: Preset) -> str:
    return storage.join(base, preset_key(preset))


def _png(a: np.ndarray) -> bytes:
    import cv2

    # Channels are stored in the array's own order and read back the same: no colour conversion.
    ok, buf = cv2.imencode(".png", a, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"could not encode an array of shape {a.shape} as PNG")
    return buf.tobytes()


def _unpng(b: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)


def crop_table(paths: Iterable[str], preset: Preset):
    """A pyarrow table of the crops of `paths` (the ones that crop; see the module's note)."""
    import pyarrow as pa

    rows = []
    for path in paths:
        try:
            data = read_source(path)
            c, d = crop_bytes(data, path, preset)
            # the leakage check's hashes too (of the first frame), so a training reads no image file
            sha, dh = image_hashes(data, d.frames[0][1] if d.frames[0][0] == 0 else decode(data, path))
            rows.append({"path": path, "image": _png(c.image), "field_mask": _png(c.field_mask.astype(np.uint8)),
                         "box": list(c.box), "shape": list(c.shape), "field_source": c.field_source,
                         "pane": c.pane, "marks_px": c.marks_px, "sha256": sha,
                         "dhash": np.packbits(dh).tobytes()})
        except Exception:
            continue
    schema = pa.schema([("path", pa.string()), ("image", pa.binary()), ("field_mask", pa.binary()),
                        ("box", pa.list_(pa.int64())), ("shape", pa.list_(pa.int64())),
                        ("field_source", pa.string()), ("pane", pa.int64()), ("marks_px", pa.int64()),
                        ("sha256", pa.string()), ("dhash", pa.binary())])
    return pa.Table.from_pylist(rows, schema=schema)


def write_part(directory: str, k: int, paths: Iterable[str], preset: Preset) -> int:
    """Crop `paths` into part `k` of the cache in `directory`; -> rows written."""
    t = crop_table(paths, preset)
    storage.write_bytes(storage.join(directory, f"part-{k:05d}.parquet"), storage.parquet_bytes(t))
    return t.num_rows


def made_with() -> dict[str, str]:
    """The code a crop depends on besides the preset: a cache made by other versions is not used."""
    from thyro.model.modelcard import package_versions

    import cv2

    v = package_versions(("thyro", "numpy", "pillow", "pydicom", "scikit-image", "scipy"))
    return {**v, "opencv": cv2.__version__}


def _digest(paths: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()


def mark_complete(directory: str, parts: int, paths: Iterable[str]) -> None:
    """Written last: the cache's `parts` parts hold the crops of `paths`, made by this code."""
    marker = {"parts": parts, "paths": _digest(paths), "made_with": made_with()}
    storage.write_bytes(storage.join(directory, COMPLETE), json.dumps(marker).encode())


def _marker(directory: str | None) -> dict | None:
    """The cache's marker if it is complete and was made by this code, else None."""
    if not directory or not storage.exists(storage.join(directory, COMPLETE)):
        return None
    try:
        marker = json.loads(storage.read_bytes(storage.join(directory, COMPLETE)))
    except ValueError:
        return None
    return marker if isinstance(marker, dict) and marker.get("made_with") == made_with() else None


def is_current(directory: str, paths: Iterable[str] | None = None) -> bool:
    """Complete, made by this code, and (given `paths`) of exactly these files: nothing to build.
    A file replaced under the same path is not noticed, as the job's reused manifest does not."""
    m = _marker(directory)
    return m is not None and (paths is None or m.get("paths") == _digest(paths))


def build(paths: list[str], preset: Preset, directory: str, part_size: int = 256) -> int:
    """Crop every path in this process (the Ray jobs spread the parts over tasks); -> rows
    (-1: the cache was already current)."""
    if is_current(directory, paths):
        return -1
    parts = [paths[i:i + part_size] for i in range(0, len(paths), part_size)]
    n = sum(write_part(directory, k, p, preset) for k, p in enumerate(parts))
    mark_complete(directory, len(parts), paths)
    return n


def _rows(directory: str | None, paths: Iterable[str] | None, columns: list[str]) -> list[dict]:
    marker = _marker(directory)
    if marker is None:
        return []
    import io

    import pyarrow.parquet as pq

    want = None if paths is None else set(paths)
    parts = int(marker["parts"])
    rows = []
    for k in range(parts):
        try:
            t = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(directory, f"part-{k:05d}.parquet"))),
                              columns=["path", *columns])
        except (OSError, ValueError):
            # A part this node cannot read (a local output folder on a multi-node cluster: the part
            # lies on the node whose task wrote it). The cache only saves time: crop as without one.
            return []
        rows += [r for r in t.to_pylist() if want is None or r["path"] in want]
    return rows


_CROP_COLUMNS = ["image", "field_mask", "box", "shape", "field_source", "pane", "marks_px"]
_HASH_COLUMNS = ["sha256", "dhash"]


def _crop(r: dict) -> Cropped:
    return Cropped(image=_unpng(r["image"]), field_mask=_unpng(r["field_mask"]).astype(bool), box=tuple(r["box"]),
                   shape=tuple(r["shape"]), field_source=r["field_source"], pane=r["pane"], marks_px=r["marks_px"])


def _hash(r: dict) -> tuple[str, np.ndarray]:
    return r["sha256"], np.unpackbits(np.frombuffer(r["dhash"], np.uint8)).astype(bool)


def load(directory: str | None, paths: Iterable[str] | None = None) -> dict[str, Cropped]:
    """path -> Cropped from a complete cache made by this code (only `paths`, when given); {}
    when there is none."""
    return {r["path"]: _crop(r) for r in _rows(directory, paths, _CROP_COLUMNS)}


def hashes(directory: str | None, paths: Iterable[str] | None = None) -> dict[str, tuple[str, np.ndarray]]:
    """path -> `thyro.data.splits.image_hashes` of the file, from a complete cache; {} when there is none."""
    return {r["path"]: _hash(r) for r in _rows(directory, paths, _HASH_COLUMNS)}


def load_with_hashes(directory: str | None, paths: Iterable[str] | None = None):
    """(`load`, `hashes`) from one read of the cache, as a training takes both."""
    rows = _rows(directory, paths, _CROP_COLUMNS + _HASH_COLUMNS)
    return {r["path"]: _crop(r) for r in rows}, {r["path"]: _hash(r) for r in rows}
