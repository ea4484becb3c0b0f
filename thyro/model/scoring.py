"""Scoring rows: one input file (or DICOM frame) -> one output row, never an exception.

Plain Python + torch; `thyro.distributed.score` runs these steps as Ray Data stages.
A row that cannot be scored carries `status="error"` and the reason; every
discovered input yields exactly one row per frame.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time

import numpy as np

from thyro.config import SIDE_FILE_EXTENSIONS
from thyro.data.decode import DecodeError
from thyro.data.sources import Item, read_item
from thyro.explain import shape
from thyro.image.preset import Preset

CAM_FEATURES = shape.FEATURES
CAM_PHYSICAL = tuple(f"cam_{k}" for k in shape.PHYSICAL_FEATURES)


def row_id(input_uri: str, frame: int, salt: str = "", pane: int = 0) -> str:
    """A stable id that carries nothing readable from the path (which can hold names)."""
    key = f"{salt}{input_uri}#{frame}" + (f"#{pane}" if pane else "")
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def file_id(input_uri: str, salt: str = "") -> str:
    """The input file's id (all its frames and panes share it), as path-free as `row_id`."""
    return hashlib.sha256(f"{salt}{input_uri}".encode()).hexdigest()[:24]


def _status_row(input_uri: str, frame: int, status: str, error: str, sha: str | None = None) -> dict:
    return {"input_uri": input_uri, "frame": frame, "pane": 0, "sha256": sha, "status": status, "error": error,
            "pixels": None, "width": None, "height": None, "geometry": None, "field_model": None,
            "mm_per_pixel_y": None, "mm_per_pixel_x": None}


def crop_mm_per_pixel(box, regions) -> tuple[float | None, float | None]:
    """(mm per original pixel down, across) for a crop, from the DICOM's ultrasound regions.

    The tissue regions that overlap the crop give the scale when they agree on it; a
    crop over regions of different scales, or none in cm, has no single scale: (None, None).
    """
    y0, x0, y1, x1 = box
    tissue = [r for r in regions or [] if getattr(r, "data_type", "") == "tissue"]
    hits = {(r.mm_per_pixel_y, r.mm_per_pixel_x) for r in tissue
            if r.box[0] < y1 and r.box[2] > y0 and r.box[1] < x1 and r.box[3] > x0}
    if len(hits) != 1:
        return None, None
    (my, mx), = hits
    return (my, mx) if my and mx else (None, None)


def _error_row(input_uri: str, frame: int, error: str, sha: str | None = None) -> dict:
    return _status_row(input_uri, frame, "error", error, sha)


# Transport failures: the object may be fine, the way to it is not. Names, because botocore,
# aiobotocore and aiohttp each have their own classes (and s3fs wraps some of them).
_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "ConnectionError", "TimeoutError"}


class StorageUnavailable(RuntimeError):
    """Object storage could not be reached. Not an error row: the input is not at fault, and a row
    would mark it done. The job stops, naming the endpoint; rerunning it resumes (nothing is lost)."""

    def __init__(self, input_uri: str, cause: BaseException):
        import os

        endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint"
        super().__init__(f"object storage unreachable at {endpoint} while reading {input_uri} "
                         f"({type(cause).__name__}: {cause}); rows written so far are kept: run the same "
                         "command again once the endpoint answers")


def storage_unreachable(e: BaseException) -> bool:
    seen = 0
    while e is not None and seen < 8:
        if {c.__name__ for c in type(e).__mro__} & _UNREACHABLE:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def side_file(input_uri: str, extensions=SIDE_FILE_EXTENSIONS) -> bool:
    name = input_uri.rsplit("/", 1)[-1].rsplit("!", 1)[-1].lower()
    return "." in name and name.endswith(tuple(extensions))


# A JPEG is decoded reduced (1/2, 1/4, 1/8 in the DCT domain) only while its smaller side keeps
# this many times the model's input side: the scan field, a part of the screen, must still
# cover the input with pixels to spare (tests/test_decode_scale.py).
DRAFT_MARGIN = 1.5
# A preset that finds the field keeps the long side at twice the detector's working copy: on
# 640x480 screens decoded at 1/2, JPEG's DCT scaling blurred the dark gaps between panes and
# beside text enough to move 5 of 32 detected boxes by up to 300 px; at >= 2x, boxes kept
# within 2% of the side (the detector's own tolerance).
FIELD_LONG_SIDE = 2 * 256


def decode_for(data: bytes, name: str, preset: Preset, frames: str | None = None, frame_step: int = 1,
               max_frames: int = 0, reduce: bool = True):
    """The frames a preset scores of one file (`decode.DecodedImage`); raises DecodeError. With
    `reduce`, a JPEG decodes at the smallest DCT scale that keeps DRAFT_MARGIN x the input side."""
    from thyro.data.decode import decode_image

    policy = frames or preset.frame
    sampling = {"frame_step": frame_step, "max_frames": max_frames} if policy == "all" else {}
    min_side = math.ceil(preset.image_size * DRAFT_MARGIN) if reduce else None
    long_side = FIELD_LONG_SIDE if preset.field != "none" else 0
    return decode_image(data, name, policy, **sampling, min_side=min_side, min_long_side=long_side)


def frame_rows(decoded, input_uri: str, sha: str, preset: Preset, as_uint8: bool = False,
               crop_row=None) -> list[dict]:
    """The ok rows of a decoded file: per frame and pane, the crop the model sees (`pixels`:
    normalised (3, S, S) float32, or with `as_uint8` the (S, S, 3) uint8 square, a quarter of
    the bytes to ship; `transforms.normalize` makes the former), its geometry in the original
    image (the file's full size also when it was decoded reduced), its field on the model
    input, mm per pixel. Field detection runs on the decoded (maybe reduced) image.
    `crop_row(image, crop, preset, regions)`, when given, makes the columns instead."""
    from thyro.image.preprocess import crop_field
    from thyro.image.transforms import eval_tensor, model_input
    from thyro.model.predictor import field_mask_on_input

    rows = []
    for i, img in decoded.frames:
        H, W = decoded.full_shape or img.shape[:2]
        for c in crop_field(img, preset, decoded.regions):
            base = {"input_uri": input_uri, "frame": int(i), "pane": int(c.pane), "sha256": sha,
                    "status": "ok", "error": None}
            if crop_row is not None:
                rows.append({**base, **crop_row(img, c, preset, decoded.regions)})
                continue
            field = np.packbits(field_mask_on_input(c, preset, img))
            g = c.geometry(preset).at_shape((H, W))
            my, mx = crop_mm_per_pixel(g.box, decoded.regions)
            px = model_input(c.image, preset) if as_uint8 else eval_tensor(c.image, preset).numpy()
            rows.append({**base, "pixels": px, "height": int(H), "width": int(W),
                         "geometry": json.dumps(g.to_dict()),
                         "field_model": field.tobytes(), "mm_per_pixel_y": my, "mm_per_pixel_x": mx})
    return rows


def prepare(item: Item, preset: Preset, frames: str | None = None, salt: str = "",
            skip_extensions=SIDE_FILE_EXTENSIONS, frame_step: int = 1, max_frames: int = 0,
            as_uint8: bool = False, reduce: bool = True, crop_row=None) -> list[dict]:
    """Read and decode an item, crop each frame as the preset says, preprocess; errors become rows.

    One row per frame (and per pane with panes: each). `frames` None: the preset's frame, the one
    the model trained on; "all" is sampled by `frame_step` and `max_frames` (`decode.select_frames`).
    A DICOMDIR, a non-image DICOM (SR, RT, presentation state) or a side file
    (`skip_extensions`) is a `skipped` row, counted apart from errors. Rows carry the crop's
    mm per pixel where the DICOM's ultrasound regions give it. `as_uint8`, `reduce`: `frame_rows`,
    `decode_for`. `crop_row(image, crop, preset, regions)`, when given, makes an ok row's own
    columns instead of the score job's; it runs under the same error handling, so another job
    (pretraining) reads inputs with exactly these rows.
    """
    from thyro.data.decode import NotAnImageError

    t0 = time.perf_counter()
    if item.error:
        rows = [_error_row(item.input_uri, 0, item.error)]
    elif skip_extensions and side_file(item.input_uri, skip_extensions):
        rows = [_status_row(item.input_uri, 0, "skipped", "not an image: side file (score.skip_extensions)")]
    else:
        try:
            data = read_item(item)
        except Exception as e:  # unreadable object, vanished file, broken archive
            if storage_unreachable(e):
                raise StorageUnavailable(item.input_uri, e) from None
            rows = [_error_row(item.input_uri, 0, f"cannot read: {type(e).__name__}: {e}")]
        else:
            sha = hashlib.sha256(data).hexdigest()
            try:
                decoded = decode_for(data, item.input_uri, preset, frames, frame_step, max_frames, reduce)
                rows = frame_rows(decoded, item.input_uri, sha, preset, as_uint8, crop_row)
            except NotAnImageError as e:
                rows = [_status_row(item.input_uri, 0, "skipped", e.problem, sha)]
            except DecodeError as e:
                rows = [_error_row(item.input_uri, 0, e.problem, sha)]
            except Exception as e:  # a decoder bug must not stop the archive
                rows = [_error_row(item.input_uri, 0, f"cannot decode: {type(e).__name__}", sha)]
    ms = (time.perf_counter() - t0) * 1000 / max(len(rows), 1)
    for r in rows:
        r["row_id"] = row_id(r["input_uri"], r["frame"], salt, r["pane"])
        r["file_id"] = file_id(r["input_uri"], salt)
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


def overlay_image(pixels: np.ndarray, cam: np.ndarray, preset: Preset, geometry=None, alpha: float = 0.45,
                  fmt: str = "png", quality: int = 85, max_side: int | None = None) -> bytes:
    """What the model saw (`pixels`: normalised (3, S, S), or the (S, S, 3) uint8 square; the field crop, in its true aspect ratio, without the
    letterbox padding) with the map over it as a jet heatmap, encoded as `fmt` (png, jpeg,
    webp; `quality` for the lossy two), at most `max_side` (default the model's input side) on
    its long side. Nothing outside the crop is drawn: a preset that crops to the field leaves
    the screen's text (names, IDs, dates) out."""
    from PIL import Image

    from thyro.image.geometry import model_map_to_crop

    side = min(max_side or preset.image_size, preset.image_size)
    if pixels.dtype == np.uint8:  # the (S, S, 3) square itself (`frame_rows(as_uint8=True)`)
        img = pixels.astype(np.float32) / 255
    else:
        img = pixels.transpose(1, 2, 0) * np.asarray(preset.std, np.float32) + np.asarray(preset.mean, np.float32)
        img = np.clip(img, 0, 1)
    if geometry is not None:
        chans = [model_map_to_crop(img[:, :, k], geometry, max_side=side) for k in range(3)]
        img = np.clip(np.stack(chans, -1), 0, 1)
    elif side < img.shape[0]:
        img = np.asarray(Image.fromarray((img * 255 + 0.5).astype(np.uint8)).resize((side, side), Image.BILINEAR,
                                                                                       reducing_gap=None)) / 255.0
    size = img.shape[:2]
    heat = Image.fromarray(np.clip(cam.astype(np.float32) * 255 + 0.5, 0, 255).astype(np.uint8)).resize(
        size[::-1], Image.BILINEAR)
    rgb = JET[np.asarray(heat)].astype(np.float32) / 255
    out = Image.fromarray((((1 - alpha) * img + alpha * rgb) * 255 + 0.5).astype(np.uint8))
    buf = io.BytesIO()
    if fmt == "png":
        # compress_level 1: a third of the encode time of the default for ~10% more bytes.
        out.save(buf, "PNG", compress_level=1)
    elif fmt == "jpeg":
        out.save(buf, "JPEG", quality=quality)
    elif fmt == "webp":
        out.save(buf, "WEBP", quality=quality, method=0)  # method 0: the fastest encoder
    else:
        raise ValueError(f"overlay format {fmt!r}: expected png, jpeg or webp")
    return buf.getvalue()


def overlay_png(pixels: np.ndarray, cam: np.ndarray, preset: Preset, geometry=None, alpha: float = 0.45) -> bytes:
    return overlay_image(pixels, cam, preset, geometry, alpha, fmt="png")


def cam_features(cam: np.ndarray, threshold: float = 0.5) -> dict:
    return {f"cam_{k}": v for k, v in shape.region_features(cam.astype(np.float32), threshold).items()}


def cam_physical(cam: np.ndarray, geometry, mm_per_pixel_y: float | None, mm_per_pixel_x: float | None,
                 threshold: float = 0.5) -> dict:
    """`shape.physical_features` of a map over the crop (`geometry.box`) of an image whose pixels are
    mm_per_pixel_y x mm_per_pixel_x: one map pixel covers box_h / cam_h x box_w / cam_w of them."""
    ch, cw = geometry.crop_shape
    h, w = cam.shape
    my = mm_per_pixel_y * ch / h if mm_per_pixel_y else None
    mx = mm_per_pixel_x * cw / w if mm_per_pixel_x else None
    return {f"cam_{k}": v for k, v in shape.physical_features(cam.astype(np.float32), threshold, my, mx).items()}
