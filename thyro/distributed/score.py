"""The score job: archives -> Ray Data -> predictions, Grad-CAM maps, Parquet, overlays.

Ray touchpoints around plain thyro code:
- discovery (`thyro.data.sources.discover`) is a generator; the driver hands Ray
  Data one bounded chunk of items at a time, so an archive of millions of files
  is never listed into memory at once;
- read + decode + preprocess (`thyro.model.scoring.prepare`) run as CPU tasks, one
  small block of items each;
- `_ScoreActor` (an actor pool) loads the saved run once per actor and runs
  forward + Grad-CAM in one pass, and nothing else;
- `_finish` (CPU tasks) adds CAM shape features (in pixels, and in mm where the
  DICOM gives the scale), writes the overlays, and with `redact_paths` the
  row_id -> path map, dropping the path from the rows;
- `write_parquet` streams the rows to `<output>/predictions/` as they come
  (no materialised copy), `rows_per_file` rows a file;
- after each chunk, the driver reads back the rows that chunk wrote and adds
  one row per input file to `<output>/files/` (a cine loop: max and mean over
  its frames).
Resume: rows already in the output for the same model, row id (salted hash of
path, frame, pane) and content hash are skipped, so a killed job rerun ends
with every input exactly once; the key needs no path, so it holds with
redacted paths too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from thyro.config import Config, config_to_dict
from thyro.data import storage

PRED_DIR = "predictions"
# score.faithfulness_steps > 0: per-row RISE areas, the map's order and a random one
FAITHFULNESS_COLUMNS = ("auc_deletion", "auc_insertion", "auc_deletion_random", "auc_insertion_random")
FILES_DIR = "files"
OVERLAY_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}


@functools.cache
def output_schema():
    """The Parquet schema, fixed: a chunk of only error rows must not change a column's type."""
    import pyarrow as pa

    from thyro.model.scoring import CAM_FEATURES, CAM_PHYSICAL

    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    fields = [("row_id", s), ("file_id", s), ("input_uri", s), ("frame", i64), ("pane", i64), ("sha256", s),
              ("status", s), ("error", s), ("prob_malignant", f64), ("margin", f64), ("label", s), ("threshold", f64),
              ("model_id", s), ("cam", pa.binary()), ("cam_height", i64), ("cam_width", i64), ("cam_target", s),
              *[(f"cam_{k}", f64) for k in CAM_FEATURES], *[(k, f64) for k in CAM_PHYSICAL], ("cam_in_field", f64),
              ("field_y0", i64), ("field_x0", i64), ("field_y1", i64), ("field_x1", i64), ("field_source", s),
              ("mm_per_pixel_y", f64), ("mm_per_pixel_x", f64),
              ("overlay_uri", s), ("width", i64), ("height", i64), ("decode_ms", f64), ("infer_ms", f64)]
    return pa.schema(fields)


@functools.cache
def files_schema():
    """One row per input file and model: a cine loop's frames summed up."""
    import pyarrow as pa

    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    return pa.schema([("file_id", s), ("input_uri", s), ("sha256", s), ("model_id", s), ("threshold", f64),
                      ("n_frames", i64), ("n_rows", i64), ("n_ok", i64), ("n_error", i64), ("n_skipped", i64),
                      ("prob_malignant_max", f64), ("prob_malignant_mean", f64), ("label_any", s)])


@functools.cache
def _prep_schema():
    import pyarrow as pa

    s, i64, f64 = pa.string(), pa.int64(), pa.float64()
    return pa.schema([("row_id", s), ("file_id", s), ("input_uri", s), ("frame", i64), ("pane", i64),
                      ("sha256", s), ("status", s), ("error", s), ("pixels", pa.binary()), ("width", i64),
                      ("height", i64), ("geometry", s), ("field_model", pa.binary()),
                      ("mm_per_pixel_y", f64), ("mm_per_pixel_x", f64), ("decode_ms", f64),
                      ("jpeg", pa.binary())])  # score.decode_on actor: the file, for the actor to decode


def _score_key(row_id: str, sha: str | None) -> str:
    # row_id already hashes path, frame and pane (salted): the key needs no path,
    # so a run with redacted paths resumes as well.
    return hashlib.sha1(f"{row_id}|{sha}".encode()).hexdigest()


def scored_keys(output: str, model_id: str, quarantine: bool = False) -> set[str]:
    """Keys of rows already written for `model_id`.

    A file cut off by a kill is unreadable: with `quarantine` it is moved to
    `<output>/_incomplete/` (kept, not deleted) and its rows are scored again.
    """
    import pyarrow.parquet as pq

    d = storage.join(output, PRED_DIR)
    fs, _ = storage.pyarrow_filesystem(d)
    keys: set[str] = set()
    for path in sorted(_parquet_files(d)):
        try:
            t = pq.read_table(path, filesystem=fs, columns=["row_id", "sha256", "model_id"])
        except Exception:
            if quarantine:
                import fsspec

                ffs, root = fsspec.core.url_to_fs(storage.join(output, "_incomplete"))
                ffs.makedirs(root, exist_ok=True)
                ffs.mv(path, f"{root}/{path.rsplit('/', 1)[-1]}")
            continue
        for r, s, m in zip(*(t.column(c).to_pylist() for c in ("row_id", "sha256", "model_id"))):
            if m == model_id:
                keys.add(_score_key(r, s))
    return keys


def _parquet_files(pred_dir: str) -> set[str]:
    import pyarrow.fs as pafs

    if not storage.exists(pred_dir):
        return set()
    fs, path = storage.pyarrow_filesystem(pred_dir)
    return {i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if i.path.endswith(".parquet")}


def _status_counts(pred_dir: str, files: set[str]) -> dict[str, int]:
    """ok / error counts of the rows in `files` (read back: what is on storage is what counts)."""
    import pyarrow.parquet as pq

    fs, _ = storage.pyarrow_filesystem(pred_dir)
    counts: dict[str, int] = {}
    for f in files:
        for v in pq.read_table(f, filesystem=fs, columns=["status"]).column("status").to_pylist():
            counts[v] = counts.get(v, 0) + 1
    return counts


def _py(v):
    """numpy scalars / NaN-for-missing -> plain Python values for pyarrow."""
    if v is None:
        return None
    if isinstance(v, float) and v != v:
        return None
    return v.item() if hasattr(v, "item") else v


class _ScoreActor:
    """Loaded once per actor: the saved run, its preset and threshold. Does the
    model's work only (forward + Grad-CAM); everything else runs in CPU tasks
    on either side, so a GPU actor never waits on PNG encoding or decoding."""

    def __init__(self, run: str, cfg_dict: dict):
        from thyro.model.predictor import Predictor

        cfg = Config.model_validate(cfg_dict)
        s = self.s = cfg.score
        storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
        import torch

        # Ray gives a fractional-CPU actor one OpenMP thread; `pool_plan` says how many it takes.
        torch.set_num_threads(s.threads or pool_plan(s, os.cpu_count() or 1, 0).threads)
        self.p = Predictor(run, device=s.device, precision=s.precision, cam_size=s.cam_size,
                           cam_target=cfg.cam.target, cam_layer_name=cfg.cam.layer)
        self.faithfulness_steps = s.faithfulness_steps

    def batch_tensor(self, pixels: list[bytes], size: int):
        """(S, S, 3) uint8 squares -> the normalised (N, 3, S, S) batch: `transforms.normalize`'s
        arithmetic, once per batch; the CPU tasks ship a quarter of the bytes of float32."""
        import torch

        u8 = np.stack([np.frombuffer(b, np.uint8).reshape(size, size, 3) for b in pixels])
        t = torch.from_numpy(u8).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(self.p.preset.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.p.preset.std).view(1, 3, 1, 1)
        return (t - mean) / std

    def _decode_here(self, table, ok: list[int]):
        """Rows that carry their JPEG (score.decode_on: actor) decoded on this actor's device in one
        batch (`thyro.data.jpeg_batch`), fitted and normalised there; the others as shipped. -> the table
        with those rows' pixels, size, geometry and status filled in (and no `jpeg` column), the
        rows still ok, and their batch."""
        import pyarrow as pa
        import torch

        from thyro.data import jpeg_batch
        from thyro.image.geometry import Geometry

        p, dev = self.p.preset, self.p.device
        cols = {k: table.column(k).to_pylist() for k in ("status", "error", "pixels", "geometry", "height", "width")}
        jpeg = table.column("jpeg").to_pylist()
        here = [i for i in ok if jpeg[i] is not None]
        squares = {}
        for i, img in zip(here, jpeg_batch.decode_batch([jpeg[i] for i in here], dev) if here else []):
            if isinstance(img, Exception):
                cols["status"][i], cols["error"][i] = "error", f"cannot decode image: {img}"
                continue
            sq, inner = jpeg_batch.to_square(img, p)
            squares[i] = sq
            h, w = int(img.shape[1]), int(img.shape[2])
            cols["pixels"][i] = sq.permute(1, 2, 0).contiguous().cpu().numpy().tobytes()  # for the overlay
            cols["geometry"][i] = json.dumps(Geometry(shape=(h, w), box=(0, 0, h, w), size=p.image_size,
                                                      inner=inner).to_dict())
            cols["height"][i], cols["width"][i] = h, w
        ok = [i for i in ok if cols["status"][i] == "ok"]
        shipped = [i for i in ok if i not in squares]
        parts = {}
        if squares:
            done = jpeg_batch.normalise(torch.stack([squares[i] for i in ok if i in squares]), p)
            parts.update(zip([i for i in ok if i in squares], done))
        if shipped:
            parts.update(zip(shipped, self.batch_tensor([cols["pixels"][i] for i in shipped],
                                                        p.image_size).to(dev)))
        x = torch.stack([parts[i] for i in ok]) if ok else None
        schema = table.schema
        for k, v in cols.items():
            table = table.set_column(schema.get_field_index(k), k, pa.array(v, type=schema.field(k).type))
        return table.drop_columns(["jpeg"]), ok, x

    def __call__(self, table):
        import pyarrow as pa
        import torch

        n = table.num_rows
        ok = [i for i, v in enumerate(table.column("status").to_pylist()) if v == "ok"]
        size = self.p.preset.image_size
        prob, margin, label, cam, target, ms = ([None] * n for _ in range(6))
        faith = {k: [None] * n for k in FAITHFULNESS_COLUMNS}
        if "jpeg" in table.column_names:
            table, ok, x = self._decode_here(table, ok)
        elif ok:
            px = table.column("pixels").to_pylist()
            x = self.batch_tensor([px[i] for i in ok], size)
        if ok:
            t0 = time.perf_counter()
            out = self.p.predict_tensor(x)
            per_image = (time.perf_counter() - t0) * 1000 / len(ok)
            for j, i in enumerate(ok):
                prob[i] = float(out.prob_malignant[j])
                margin[i] = float(out.margin[j])
                label[i] = "malignant" if out.label[j] else "benign"
                cam[i] = out.cam_model[j].astype(np.float16).tobytes()  # model space; _finish maps it back
                target[i] = "malignant" if out.target[j] == 1 else "benign"
                ms[i] = per_image
            if self.faithfulness_steps:
                c = self.p.faithfulness(x, out, self.faithfulness_steps)
                for k in FAITHFULNESS_COLUMNS:
                    for j, i in enumerate(ok):
                        faith[k][i] = None if np.isnan(c[k][j]) else float(c[k][j])
        for name, values, typ in (("prob_malignant", prob, pa.float64()), ("margin", margin, pa.float64()),
                                  ("label", label, pa.string()), ("cam", cam, pa.binary()),
                                  ("cam_target", target, pa.string()), ("infer_ms", ms, pa.float64()),
                                  ("threshold", [self.p.threshold] * n, pa.float64()),
                                  ("model_id", [self.p.model_id] * n, pa.string()),
                                  ("cam_size", [self.p.cam_size] * n, pa.int64()),
                                  *((f"cam_{k}", v, pa.float64()) for k, v in faith.items())):
            table = table.append_column(name, pa.array(values, type=typ))
        return table


class _FusedScorer:
    """score.stages fused: one actor reads, decodes and preprocesses a block, scores it batch by
    batch and finishes the rows (shape features, overlays) itself. On a CPU node the split stages
    cost more than they save: every CPU task process pays thyro's imports (~5 core-s), blocks
    cross the object store twice, and the predictor's threads contend with the tasks for the same
    cores. One single-threaded actor per core keeps every core busy with no contention."""

    def __init__(self, run: str, cfg_dict: dict, preset: dict, skip_ref: list, finish_args: dict):
        import ray

        from thyro.image.preset import Preset

        self.scorer = _ScoreActor(run, cfg_dict)
        self.s = self.scorer.s
        self.preset = Preset.from_dict(preset)
        self.skip = ray.get(skip_ref[0])
        self.finish_args = finish_args

    def __call__(self, items):
        import pyarrow as pa

        rows = prepare_block(items, self.preset, self.s, self.skip, decode_on_actor(self.s))
        bs = self.s.batch_size
        parts = [_finish(self.scorer(rows.slice(i, bs)), **self.finish_args) for i in range(0, rows.num_rows, bs)]
        return pa.concat_tables(parts) if parts else output_schema().empty_table()


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
            if _score_key(raw["row_id"], raw["sha256"]) not in skip:
                out.append(raw)
            continue
        for r in prepare(Item(u, data, err), preset, s.frames, s.hash_salt, s.skip_extensions,
                         s.frame_step, s.max_frames, as_uint8=True):
            if _score_key(r["row_id"], r["sha256"]) in skip:
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
        else:  # decoded by the actor: the field is found on the square the model saw
            from thyro.image.field import detect_fields, union_mask

            square = np.frombuffer(batch["pixels"][i], np.uint8).reshape(g.size, g.size, 3)
            field = union_mask(detect_fields(square), (g.size, g.size))
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


def _finish(table, output: str, overlays: str, region: float, preset: dict, cam_size: int,
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


_FILE_COLUMNS = ["file_id", "input_uri", "sha256", "frame", "status", "prob_malignant", "threshold", "model_id"]


def file_rows(rows):
    """Prediction rows (any subset of whole files) -> one row per (file_id, model_id): frames
    scored, the max and mean probability over its ok rows, malignant if any is at the threshold,
    and how many rows each status has. One vectorised group-by: the driver runs it between
    chunks, while the actors wait."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = rows.select(_FILE_COLUMNS)
    ok = pc.equal(t.column("status"), "ok")
    null_f64, null_i64 = pa.scalar(None, pa.float64()), pa.scalar(None, pa.int64())
    t = t.append_column("ok_prob", pc.if_else(ok, t.column("prob_malignant"), null_f64))
    t = t.append_column("ok_frame", pc.if_else(ok, t.column("frame"), null_i64))
    for status in ("ok", "error", "skipped"):
        t = t.append_column(f"is_{status}", pc.cast(pc.equal(t.column("status"), status), pa.int64()))
    g = t.group_by(["file_id", "model_id"], use_threads=False).aggregate([
        ("input_uri", "first"), ("sha256", "first"), ("threshold", "first"), ("ok_frame", "count_distinct"),
        ("status", "count", pc.CountOptions(mode="all")), ("is_ok", "sum"), ("is_error", "sum"),
        ("is_skipped", "sum"), ("ok_prob", "max"), ("ok_prob", "mean")])
    g = g.sort_by([("file_id", "ascending"), ("model_id", "ascending")])
    top, thr = g.column("ok_prob_max"), g.column("threshold_first")
    label = pc.if_else(pc.greater_equal(top, thr), "malignant", "benign")  # null where either is
    cols = {"file_id": g.column("file_id"), "input_uri": g.column("input_uri_first"),
            "sha256": g.column("sha256_first"), "model_id": g.column("model_id"), "threshold": thr,
            "n_frames": g.column("ok_frame_count_distinct"), "n_rows": g.column("status_count"),
            "n_ok": g.column("is_ok_sum"), "n_error": g.column("is_error_sum"),
            "n_skipped": g.column("is_skipped_sum"), "prob_malignant_max": top,
            "prob_malignant_mean": g.column("ok_prob_mean"), "label_any": label}
    schema = files_schema()
    return pa.table({f.name: pc.cast(cols[f.name], f.type) for f in schema}, schema=schema)


def _read_rows(pred_dir: str, paths, ids: set[str] | None = None, model_id: str | None = None):
    """The per-file columns of `paths`, only rows of `ids` and `model_id` when given; files
    written before `file_id` existed, or cut off by a kill, are passed over."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, _ = storage.pyarrow_filesystem(pred_dir)
    parts = []
    for path in sorted(paths):
        try:
            t = pq.read_table(path, filesystem=fs, columns=_FILE_COLUMNS)
        except Exception:
            continue
        if ids is not None:
            t = t.filter(pc.is_in(t.column("file_id"), value_set=pa.array(sorted(ids), pa.string())))
        if model_id is not None:
            t = t.filter(pc.equal(t.column("model_id"), model_id))
        parts.append(t)
    return pa.concat_tables(parts) if parts else None


def _file_ids(pred_dir: str, paths, model_id: str) -> set[str]:
    t = _read_rows(pred_dir, paths, model_id=model_id)
    return set() if t is None else set(t.column("file_id").to_pylist())


def _write_file_rows(output: str, rows) -> int:
    """One Parquet file of per-file rows under `<output>/files/`; how many rows."""
    if rows is None or rows.num_rows == 0:
        return 0
    t = file_rows(rows)
    storage.write_many({storage.join(output, FILES_DIR, f"part-{uuid.uuid4().hex}.parquet"): storage.parquet_bytes(t)})
    return t.num_rows


def _summarised_ids(output: str, model_id: str) -> set[str]:
    """file_ids that already have a per-file row; an unreadable part (a kill) is moved aside."""
    import pyarrow.parquet as pq

    d = storage.join(output, FILES_DIR)
    fs, _ = storage.pyarrow_filesystem(d)
    have: set[str] = set()
    for path in sorted(_parquet_files(d)):
        try:
            t = pq.read_table(path, filesystem=fs, columns=["file_id", "model_id"])
        except Exception:
            import fsspec

            ffs, root = fsspec.core.url_to_fs(storage.join(output, "_incomplete", FILES_DIR))
            ffs.makedirs(root, exist_ok=True)
            ffs.mv(path, f"{root}/{path.rsplit('/', 1)[-1]}")
            continue
        have |= {f for f, m in zip(*(t.column(c).to_pylist() for c in ("file_id", "model_id"))) if m == model_id}
    return have


def decode_on_actor(s) -> bool:
    """score.decode_on: `actor` always, `cpu` never, `auto` when the actor has a GPU (nvjpeg)."""
    return s.decode_on == "actor" or (s.decode_on == "auto" and s.gpus_per_actor > 0)


@dataclass(frozen=True)
class PoolPlan:
    fused: bool
    actors: int
    min_actors: int
    threads: int


def pool_plan(s, cluster_cpus: float, cluster_gpus: float, node_cpus: int | None = None) -> PoolPlan:
    """How the predictor pool runs (score.stages, actors, min_actors, threads; 0 = auto).

    auto stages: split when the actor has a GPU (the CPU tasks decode and finish around it, so the
    GPU never waits on them), fused on CPU nodes. Auto actors: fused, one per CPU of the cluster,
    one torch thread each, the whole pool from the start (its single-threaded processes share the
    cores without OpenMP barriers stalling on a preempted thread); split, one per GPU the
    cluster's `gpus_per_actor` allows, else one. Auto threads: the node's cores over its actors."""
    fused = s.stages == "fused" or (s.stages == "auto" and s.gpus_per_actor == 0)
    if s.actors:
        actors, low = s.actors, min(s.min_actors, s.actors)
    elif fused:
        actors = low = max(1, int(cluster_cpus))
    else:
        actors = max(1, int(cluster_gpus // s.gpus_per_actor)) if s.gpus_per_actor else 1
        low = min(s.min_actors, actors)
    per_node = min(actors, node_cpus or actors) if fused else actors
    threads = s.threads or max(1, (node_cpus or int(cluster_cpus) or 1) // max(1, per_node))
    return PoolPlan(fused, actors, low, threads)


@dataclass
class ScoreResult:
    output: str
    counts: dict
    seconds: float


def run_score(cfg: Config, model: str, input_uri: str, output: str, log: Callable[[str], None] = print) -> ScoreResult:
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy

    from thyro.data.sources import chunks, discover
    from thyro.distributed.common import init_ray
    from thyro.image.preset import Preset
    from thyro.model.checkpoint import load_card
    from thyro.model.modelcard import package_versions

    t0 = time.perf_counter()
    s = cfg.score
    if s.redact_paths and not s.path_map_uri:  # the config refuses this too; checked before any Ray work
        raise ValueError("score.redact_paths is on but score.path_map_uri is not set")
    init_ray(cfg)
    res = ray.cluster_resources()
    plan = pool_plan(s, res.get("CPU", 0), res.get("GPU", 0), os.cpu_count())
    # The resolved pool goes into the manifest's config and to the actors.
    cfg = cfg.model_copy(update={"score": s.model_copy(update={
        "actors": plan.actors, "min_actors": plan.min_actors, "threads": plan.threads,
        "stages": "fused" if plan.fused else "split"})})
    s = cfg.score
    output = storage.absolute(output)
    input_uri = storage.absolute(input_uri)
    model = storage.absolute(model)
    path_map = storage.absolute(s.path_map_uri) if s.redact_paths else None
    card = load_card(model)
    model_id = card.get("model_id") or card["name"]
    preset = Preset.from_dict(card["inputs"]["preprocessing"])
    done = scored_keys(output, model_id, quarantine=True)
    done_ref = ray.put(done)
    log(f"score: {input_uri} with {model_id} -> {output} ({len(done)} rows already scored; "
        f"{'fused' if plan.fused else 'split'} stages, {plan.actors} actor(s) x {plan.threads} thread(s))")

    endpoint, region = cfg.storage.endpoint_url, cfg.storage.region

    on_actor = decode_on_actor(s)

    def prep(items):
        """A block of items -> a block of decoded, preprocessed rows (never raises per input)."""
        storage.configure(endpoint, region)  # this worker may not have the job's env
        return prepare_block(items, preset, s, ray.get(done_ref), on_actor)

    pred_dir = storage.join(output, PRED_DIR)
    fs, pred_path = storage.pyarrow_filesystem(pred_dir)
    prior = _parquet_files(pred_dir)
    # On a resumed run a file's frames can lie in earlier files as well: its per-file row counts them.
    prior_ids = _file_ids(pred_dir, prior, model_id) if done else set()
    counts = {"discovered": 0, "ok": 0, "error": 0, "skipped": 0, "files": 0, "previously_scored": len(done)}
    actor_args = {"run": model, "cfg_dict": config_to_dict(cfg)}
    finish_args = {"output": output, "overlays": s.overlays, "region": cfg.cam.region_threshold,
                   "preset": preset.to_dict(), "cam_size": s.cam_size, "overlay_format": s.overlay_format,
                   "overlay_quality": s.overlay_quality, "overlay_max_side": s.overlay_max_side,
                   "path_map_uri": path_map}

    # Decoding a frame takes memory a GPU actor's node should not have to find
    # at once; the differing request is also what keeps Ray Data from fusing
    # these tasks into the predictor actor (it fuses only ops with equal remote
    # args), where decoding would leave the actor's GPU, or its threads, idle.
    cpu_task_args = {"num_cpus": s.cpus_per_task, "memory": s.task_memory_mib << 20}

    for chunk_no, chunk in enumerate(chunks(discover(input_uri), s.chunk_size, s.chunk_mib << 20), 1):
        counts["discovered"] += len(chunk)
        before, t_chunk = _parquet_files(pred_dir), time.perf_counter()
        # Small blocks keep the stream moving: the actors start on the first
        # decoded batch instead of waiting for a quarter of the chunk.
        blocks = max(1, -(-len(chunk) // (s.block_batches * s.batch_size)))
        ds = ray.data.from_items([asdict(i) for i in chunk], override_num_blocks=blocks)
        pool = {"compute": ActorPoolStrategy(min_size=plan.min_actors, max_size=plan.actors,
                                             max_tasks_in_flight_per_actor=s.tasks_in_flight_per_actor),
                "num_cpus": s.cpus_per_actor, "num_gpus": s.gpus_per_actor or None, "batch_format": "pyarrow"}
        if plan.fused:
            ds = ds.map_batches(_FusedScorer, batch_size=None, **pool, fn_constructor_kwargs={
                **actor_args, "preset": preset.to_dict(), "skip_ref": [done_ref], "finish_args": finish_args})
        else:
            ds = ds.map_batches(prep, batch_size=None, batch_format="pyarrow", **cpu_task_args)
            ds = ds.map_batches(_ScoreActor, fn_constructor_kwargs=actor_args, batch_size=s.batch_size, **pool)
            ds = ds.map_batches(_finish, fn_kwargs=finish_args, batch_size=None, batch_format="pyarrow",
                                **cpu_task_args)
        ds.write_parquet(pred_path, filesystem=fs, min_rows_per_file=s.rows_per_file)
        new = _parquet_files(pred_dir) - before
        written = _status_counts(pred_dir, new)
        for status, k in written.items():
            counts[status] = counts.get(status, 0) + k
        # Every frame of an input is in the chunk that discovered it: the chunk's own files (plus,
        # resuming, earlier rows of the same inputs) hold whole files, so memory stays one chunk's.
        rows = _read_rows(pred_dir, new, model_id=model_id)
        if rows is not None and prior_ids:
            again = set(rows.column("file_id").to_pylist()) & prior_ids
            if again:
                import pyarrow as pa

                rows = pa.concat_tables([rows, _read_rows(pred_dir, prior, again, model_id)])
        counts["files"] += _write_file_rows(output, rows)
        log(f"chunk {chunk_no}: {len(chunk)} inputs, {sum(written.values())} rows written "
            f"in {time.perf_counter() - t_chunk:.1f}s")
    if done:
        # A run killed between a chunk's rows and its per-file rows left inputs with no per-file
        # row (and none of their frames to score now): summarised here, from what is on storage.
        missing = _file_ids(pred_dir, _parquet_files(pred_dir), model_id) - _summarised_ids(output, model_id)
        if missing:
            counts["files"] += _write_file_rows(output, _read_rows(pred_dir, _parquet_files(pred_dir), missing, model_id))
    manifest = {"model": model, "model_id": model_id, "input": input_uri, "output": output,
                "counts": counts, "config": config_to_dict(cfg), "model_card": card,
                "versions": package_versions(),
                "seconds": time.perf_counter() - t0}
    storage.write_bytes(storage.join(output, "run_manifest.json"), json.dumps(manifest, indent=2, default=str).encode())
    return ScoreResult(output=output, counts=counts, seconds=time.perf_counter() - t0)
