"""The CPU stages around the predictor, one block of rows at a time: items -> decoded,
preprocessed rows (`prepare_block`), and scored rows -> shape features, overlays and the
fixed output schema (`finish_rows`). Never raises per input: a bad input is an error row.

Plain Python + numpy + pyarrow at import (torch and the model's code load when a stage first
runs); `thyro.distributed.score` runs them as Ray Data CPU tasks, or inside the predictor
actor with fused stages (`thyro.model.batch_scorer.FusedScorer`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import uuid

import numpy as np

from thyro.data import storage
from thyro.model.score_output import output_schema, score_key

OVERLAY_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}


@functools.cache
def _prep_schema():
    import pyarrow as pa

    s, i64, f64 = pa.string(), pa.int64(), pa.float64()
    return pa.schema([("row_id", s), ("file_id", s), ("input_uri", s), ("frame", i64), ("pane", i64),
                      ("sha256", s), ("status", s), ("error", s), ("pixels", pa.binary()), ("width", i64),
                      ("height", i64), ("geometry", s), ("field_model", pa.binary()),
                      ("mm_per_pixel_y", f64), ("mm_per_pixel_x", f64), ("decode_ms", f64),
                      ("jpeg", pa.binary()),   # score.decode_on actor: the file, for the actor to decode,
                      ("field_view", pa.binary())])  # and the grey copy it makes, to find the field on


def _py(v):
    """numpy scalars / NaN-for-missing -> plain Python values for pyarrow."""
    if v is None:
        return None
    if isinstance(v, float) and v != v:
        return None
    return v.item() if hasattr(v, "item") else v


def _bytes_row(item, preset, s) -> dict | None:
    """score.decode_on actor: a JPEG the actor can decode (`jpeg_batch.eligible`) as a row that
    carries its bytes, read and hashed here and nothing more; None: the CPU path takes it."""
    from thyro.data.jpeg_batch import eligible
    from thyro.data.sources import read_item
    from thyro.model.scoring import file_id, row_id, side_file

    if item.error or (s.skip_extensions and side_file(item.input_uri, s.skip_extensions)):
        return None
    t0 = time.perf_counter()
    try:
        data = read_item(item)
    except Exception:
        return None  # prepare() reads it again and says what is wrong
    hw = eligible(data, preset)
    if hw is None:
        return None
    return {"row_id": row_id(item.input_uri, 0, s.hash_salt), "file_id": file_id(item.input_uri, s.hash_salt),
            "input_uri": item.input_uri, "frame": 0, "pane": 0, "sha256": hashlib.sha256(data).hexdigest(),
            "status": "ok", "error": None, "pixels": None, "height": hw[0], "width": hw[1], "geometry": None,
            "field_model": None, "mm_per_pixel_y": None, "mm_per_pixel_x": None, "jpeg": data,
            "decode_ms": (time.perf_counter() - t0) * 1000}


def prepare_block(items, preset, s, skip: set[str] = frozenset(), on_actor: bool = False):
    """A block of discovered items (pyarrow: input_uri, data, error) -> decoded, preprocessed rows
    (`_prep_schema`), without the rows whose key is in `skip`; never raises per input. `on_actor`:
    JPEGs the actor can decode travel as bytes (`_bytes_row`), the rest as always."""
    import pyarrow as pa

    from thyro.data.sources import Item
    from thyro.model.scoring import prepare

    out = []
    for u, data, err in zip(*(items.column(c).to_pylist() for c in ("input_uri", "data", "error"))):
        raw = _bytes_row(Item(u, data, err), preset, s) if on_actor else None
        if raw is not None:
            if score_key(raw["row_id"], raw["sha256"]) not in skip:
                out.append(raw)
            continue
        for r in prepare(Item(u, data, err), preset, s.frames, s.hash_salt, s.skip_extensions,
                         s.frame_step, s.max_frames, as_uint8=True):
            if score_key(r["row_id"], r["sha256"]) in skip:
                continue
            px = r.pop("pixels")
            r["pixels"] = None if px is None else np.ascontiguousarray(px, np.uint8).tobytes()
            out.append(r)
    return pa.Table.from_pylist(out, schema=_prep_schema())


def _redact(text: str | None, uri: str) -> str | None:
    """An error message without the path (a FileNotFoundError names it)."""
    if not text:
        return text
    for part in sorted({uri, *uri.split("!")} - {""}, key=len, reverse=True):
        text = text.replace(part, "<input>")
    return text


def finish_features(batch, region: float, cam_size: int) -> tuple[dict, list]:
    """The maps of a block's ok rows (pyarrow table or its `to_pydict()`) put back over their crops,
    with their shape features (pixels: one batched pass, `shape.region_features_batch`; mm),
    cam_in_field and the crop box: (columns, one
    (map over the crop, Geometry) or None per row). The `cam` column holds the maps over the crops."""
    from thyro.explain import shape
    from thyro.image.geometry import Geometry, model_map_to_crop
    from thyro.model.predictor import cam_in_field
    from thyro.model.scoring import CAM_FEATURES, CAM_PHYSICAL, cam_physical

    if not isinstance(batch, dict):
        batch = batch.to_pydict()
    n = len(batch["status"])
    extra = {k: [None] * n for k in (*[f"cam_{k}" for k in CAM_FEATURES], *CAM_PHYSICAL, "cam_in_field",
                                     "cam_height", "cam_width", "field_y0", "field_x0", "field_y1", "field_x1",
                                     "field_source")}
    extra["cam"] = list(batch["cam"])
    maps = [None] * n
    for i in range(n):
        if batch["status"][i] != "ok":
            continue
        c = batch["cam_size"][i]
        g = Geometry.from_dict(json.loads(batch["geometry"][i]))
        cam_model = np.frombuffer(batch["cam"][i], np.float16).reshape(c, c).astype(np.float32)
        if batch["field_model"][i] is not None:
            field = np.unpackbits(np.frombuffer(batch["field_model"][i], np.uint8))[:g.size * g.size]
            field = field.reshape(g.size, g.size).astype(bool)
        else:  # decoded by the actor: the field is found here, on the grey copy it made of the whole image
            from thyro.image.field import working_shape
            from thyro.model.predictor import field_mask_from_view

            vh, vw = working_shape(*g.shape)
            field = field_mask_from_view(np.frombuffer(batch["field_view"][i], np.uint8).reshape(vh, vw), g)
        extra["cam_in_field"][i] = cam_in_field(cam_model, field)
        cam = model_map_to_crop(cam_model, g, cam_size)
        extra["cam"][i] = cam.astype(np.float16).tobytes()
        extra["cam_height"][i], extra["cam_width"][i] = cam.shape
        for k, v in cam_physical(cam, g, batch["mm_per_pixel_y"][i], batch["mm_per_pixel_x"][i], region).items():
            extra[k][i] = v
        for k, v in zip(("field_y0", "field_x0", "field_y1", "field_x1"), g.box):
            extra[k][i] = v
        extra["field_source"][i] = g.field_source
        maps[i] = (cam, g)
    ok = [i for i in range(n) if maps[i] is not None]
    for i, feats in zip(ok, shape.region_features_batch([maps[i][0] for i in ok], region)):
        for k, v in feats.items():
            extra[f"cam_{k}"][i] = v
    return extra, maps


def finish_rows(table, output: str, overlays: str, region: float, preset: dict, cam_size: int,
                overlay_format: str = "jpeg", overlay_quality: int = 85, overlay_max_side: int = 256,
                path_map_uri: str | None = None):
    """Maps back to the original geometry, their shape features (pixels and mm) and cam_in_field,
    overlays; with `path_map_uri`, the row_id -> path map written there and the paths dropped;
    drops the pixels; the fixed output schema."""
    import pyarrow as pa

    from thyro.image.preset import Preset
    from thyro.model.scoring import overlay_image

    p = Preset.from_dict(preset)
    batch = table.to_pydict()
    n = table.num_rows
    extra, maps = finish_features(batch, region, cam_size)
    batch["cam"] = extra.pop("cam")
    extra["overlay_uri"] = [None] * n
    files = {}
    for i in range(n):
        if maps[i] is None:
            continue
        cam, g = maps[i]
        if overlays == "all" or (overlays == "errors_and_positives" and batch["label"][i] == "malignant"):
            uri = storage.join(output, "overlays", f"{batch['row_id'][i]}.{OVERLAY_EXT[overlay_format]}")
            img = np.frombuffer(batch["pixels"][i], np.uint8).reshape(p.image_size, p.image_size, 3)
            files[uri] = overlay_image(img, cam, p, g, fmt=overlay_format, quality=overlay_quality,
                                       max_side=overlay_max_side)
            extra["overlay_uri"][i] = uri
    if path_map_uri and n:
        files[storage.join(path_map_uri, f"part-{uuid.uuid4().hex}.parquet")] = storage.parquet_bytes(pa.table(
            {k: pa.array(batch[k], pa.string()) for k in ("row_id", "file_id", "input_uri")}))
        batch["error"] = [_redact(e, u) for e, u in zip(batch["error"], batch["input_uri"])]
        batch["input_uri"] = [None] * n
    # Overlays and the path map land before their rows: a row never points at a missing file.
    storage.write_many(files)
    batch.update(extra)
    schema = output_schema()
    return pa.table({f.name: pa.array([_py(v) for v in batch[f.name]], type=f.type) for f in schema}, schema=schema)
