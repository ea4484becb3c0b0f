"""Scoring rows: one input file (or DICOM frame) -> one output row, never an exception.

Plain Python + torch; `thyro.ray_score` runs these steps as Ray Data stages.
A row that cannot be scored carries `status="error"` and the reason; every
discovered input yields exactly one row per frame.
"""

from __future__ import annotations

import hashlib
import io
import json
import time

import numpy as np

from thyro import shape
from thyro.config import SIDE_FILE_EXTENSIONS
from thyro.decode import DecodeError
from thyro.sources import Item, read_item
from thyro.transforms import Preset, eval_tensor

CAM_FEATURES = shape.FEATURES


def row_id(input_uri: str, frame: int, salt: str = "", pane: int = 0) -> str:
    """A stable id that carries nothing readable from the path (which can hold names)."""
    key = f"{salt}{input_uri}#{frame}" + (f"#{pane}" if pane else "")
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _status_row(input_uri: str, frame: int, status: str, error: str, sha: str | None = None) -> dict:
    return {"input_uri": input_uri, "frame": frame, "pane": 0, "sha256": sha, "status": status, "error": error,
            "pixels": None, "width": None, "height": None, "geometry": None, "field_model": None}


def _error_row(input_uri: str, frame: int, error: str, sha: str | None = None) -> dict:
    return _status_row(input_uri, frame, "error", error, sha)


def side_file(input_uri: str, extensions=SIDE_FILE_EXTENSIONS) -> bool:
    name = input_uri.rsplit("/", 1)[-1].rsplit("!", 1)[-1].lower()
    return "." in name and name.endswith(tuple(extensions))


def prepare(item: Item, preset: Preset, frames: str | None = None, salt: str = "",
            skip_extensions=SIDE_FILE_EXTENSIONS) -> list[dict]:
    """Read and decode an item, crop each frame as the preset says, preprocess; errors become rows.

    One row per frame (and per pane with panes: each). `frames` None: the preset's frame, the one
    the model trained on. A DICOMDIR, a non-image DICOM (SR, RT, presentation state) or a side file
    (`skip_extensions`) is a `skipped` row, counted apart from errors.
    """
    from thyro.decode import NotAnImageError, decode_image
    from thyro.preprocess import crop_field
    from thyro.predictor import field_mask_on_input

    t0 = time.perf_counter()
    if item.error:
        rows = [_error_row(item.input_uri, 0, item.error)]
    elif skip_extensions and side_file(item.input_uri, skip_extensions):
        rows = [_status_row(item.input_uri, 0, "skipped", "not an image: side file (score.skip_extensions)")]
    else:
        try:
            data = read_item(item)
        except Exception as e:  # unreadable object, vanished file, broken archive
            rows = [_error_row(item.input_uri, 0, f"cannot read: {type(e).__name__}: {e}")]
        else:
            sha = hashlib.sha256(data).hexdigest()
            try:
                decoded = decode_image(data, item.input_uri, frames or preset.frame)
                rows = []
                for i, img in decoded.frames:
                    for c in crop_field(img, preset, decoded.regions):
                        field = np.packbits(field_mask_on_input(c, preset, img))
                        rows.append({"input_uri": item.input_uri, "frame": int(i), "pane": int(c.pane), "sha256": sha,
                                     "status": "ok", "error": None, "pixels": eval_tensor(c.image, preset).numpy(),
                                     "height": int(img.shape[0]), "width": int(img.shape[1]),
                                     "geometry": json.dumps(c.geometry(preset).to_dict()),
                                     "field_model": field.tobytes()})
            except NotAnImageError as e:
                rows = [_status_row(item.input_uri, 0, "skipped", e.problem, sha)]
            except DecodeError as e:
                rows = [_error_row(item.input_uri, 0, e.problem, sha)]
            except Exception as e:  # a decoder bug must not stop the archive
                rows = [_error_row(item.input_uri, 0, f"cannot decode: {type(e).__name__}", sha)]
    ms = (time.perf_counter() - t0) * 1000 / max(len(rows), 1)
    for r in rows:
        r["row_id"] = row_id(r["input_uri"], r["frame"], salt, r["pane"])
        r["decode_ms"] = ms
    return rows


def _jet_lut() -> np.ndarray:
    """matplotlib's "jet" as a 256x3 uint8 table: same colours, without importing
    matplotlib in every scoring actor or paying its per-pixel float path."""
    x = np.linspace(0, 1, 256)
    r = np.interp(x, [0, 0.35, 0.66, 0.89, 1], [0, 0, 1, 1, 0.5])
    g = np.interp(x, [0, 0.125, 0.375, 0.64, 0.91, 1], [0, 0, 1, 1, 0, 0])
    b = np.interp(x, [0, 0.11, 0.34, 0.65, 1], [0.5, 1, 1, 0, 0])
    return np.round(np.stack([r, g, b], 1) * 255).astype(np.uint8)


JET = _jet_lut()


def overlay_png(pixels: np.ndarray, cam: np.ndarray, preset: Preset, geometry=None, alpha: float = 0.45) -> bytes:
    """What the model saw (denormalised; the field crop, in its true aspect ratio, without the
    letterbox padding) with the map over it as a jet heatmap. Nothing outside the crop is drawn:
    a preset that crops to the field leaves the screen's text (names, IDs, dates) out."""
    from PIL import Image

    from thyro.geometry import model_map_to_crop

    img = pixels.transpose(1, 2, 0) * np.asarray(preset.std, np.float32) + np.asarray(preset.mean, np.float32)
    img = np.clip(img, 0, 1)
    if geometry is not None:
        chans = [model_map_to_crop(img[:, :, k], geometry, max_side=preset.image_size) for k in range(3)]
        img = np.clip(np.stack(chans, -1), 0, 1)
    size = img.shape[:2]
    heat = Image.fromarray(np.clip(cam.astype(np.float32) * 255 + 0.5, 0, 255).astype(np.uint8)).resize(
        size[::-1], Image.BILINEAR)
    rgb = JET[np.asarray(heat)].astype(np.float32) / 255
    out = (1 - alpha) * img + alpha * rgb
    buf = io.BytesIO()
    # compress_level 1: a third of the encode time of the default for ~10% more bytes.
    Image.fromarray((out * 255 + 0.5).astype(np.uint8)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def cam_features(cam: np.ndarray, threshold: float = 0.5) -> dict:
    return {f"cam_{k}": v for k, v in shape.region_features(cam.astype(np.float32), threshold).items()}
