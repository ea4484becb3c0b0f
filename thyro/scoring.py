"""Scoring rows: one input file (or DICOM frame) -> one output row, never an exception.

Plain Python + torch; `thyro.ray_score` runs these steps as Ray Data stages.
A row that cannot be scored carries `status="error"` and the reason; every
discovered input yields exactly one row per frame.
"""

from __future__ import annotations

import hashlib
import io
import time

import numpy as np

from thyro import shape
from thyro.decode import DecodeError, decode_frames
from thyro.sources import Item, read_item
from thyro.transforms import Preset, eval_transform

CAM_FEATURES = shape.FEATURES


def row_id(input_uri: str, frame: int, salt: str = "") -> str:
    """A stable id that carries nothing readable from the path (which can hold names)."""
    return hashlib.sha256(f"{salt}{input_uri}#{frame}".encode()).hexdigest()[:24]


def _error_row(input_uri: str, frame: int, error: str, sha: str | None = None, **extra) -> dict:
    return {"input_uri": input_uri, "frame": frame, "sha256": sha, "status": "error", "error": error,
            "pixels": None, "width": None, "height": None, **extra}


def prepare(item: Item, preset: Preset, frames: str = "first", salt: str = "") -> list[dict]:
    """Read and decode an item, preprocess each frame; errors become rows."""
    t0 = time.perf_counter()
    if item.error:
        rows = [_error_row(item.input_uri, 0, item.error)]
    else:
        try:
            data = read_item(item)
        except Exception as e:  # unreadable object, vanished file, broken archive
            rows = [_error_row(item.input_uri, 0, f"cannot read: {type(e).__name__}: {e}")]
        else:
            sha = hashlib.sha256(data).hexdigest()
            try:
                decoded = decode_frames(data, item.input_uri, frames)
            except DecodeError as e:
                rows = [_error_row(item.input_uri, 0, e.problem, sha)]
            except Exception as e:  # a decoder bug must not stop the archive
                rows = [_error_row(item.input_uri, 0, f"cannot decode: {type(e).__name__}", sha)]
            else:
                t = eval_transform(preset)
                rows = [{"input_uri": item.input_uri, "frame": int(i), "sha256": sha, "status": "ok", "error": None,
                         "pixels": t(img).numpy(), "height": int(img.shape[0]), "width": int(img.shape[1])}
                        for i, img in decoded]
    ms = (time.perf_counter() - t0) * 1000 / max(len(rows), 1)
    for r in rows:
        r["row_id"] = row_id(r["input_uri"], r["frame"], salt)
        r["decode_ms"] = ms
    return rows


def overlay_png(pixels: np.ndarray, cam: np.ndarray, preset: Preset, alpha: float = 0.45) -> bytes:
    """The preprocessed image (denormalised) with the CAM as a jet heatmap."""
    from matplotlib import colormaps
    from PIL import Image

    img = pixels.transpose(1, 2, 0) * np.asarray(preset.std) + np.asarray(preset.mean)
    img = np.clip(img, 0, 1)
    size = img.shape[:2]
    heat = np.asarray(Image.fromarray((cam.astype(np.float32) * 255).astype(np.uint8)).resize(
        size[::-1], Image.BILINEAR), dtype=np.float32) / 255
    rgb = colormaps["jet"](heat)[..., :3]
    out = (1 - alpha) * img + alpha * rgb
    buf = io.BytesIO()
    Image.fromarray((out * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def cam_features(cam: np.ndarray, threshold: float = 0.5) -> dict:
    return {f"cam_{k}": v for k, v in shape.region_features(cam.astype(np.float32), threshold).items()}
