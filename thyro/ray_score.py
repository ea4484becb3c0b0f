"""The score job: archives -> Ray Data -> predictions, Grad-CAM maps, Parquet, overlays.

Ray touchpoints around plain thyro code:
- discovery (`thyro.sources.discover`) is a generator; the driver hands Ray
  Data one bounded chunk of items at a time, so an archive of millions of files
  is never listed into memory at once;
- read + decode + preprocess (`thyro.scoring.prepare`) run as CPU tasks, one
  small block of items each;
- `_ScoreActor` (an actor pool) loads the saved run once per actor and runs
  forward + Grad-CAM in one pass, and nothing else;
- `_finish` (CPU tasks) adds CAM shape features and writes the overlays;
- `write_parquet` streams the rows to `<output>/predictions/` as they come
  (no materialised copy), `rows_per_file` rows a file.
Resume: rows already in the output for the same model and the same content
hash are skipped, so a killed job rerun ends with every input exactly once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from thyro import storage
from thyro.config import Config, config_to_dict

PRED_DIR = "predictions"


@functools.cache
def output_schema():
    """The Parquet schema, fixed: a chunk of only error rows must not change a column's type."""
    import pyarrow as pa

    from thyro.scoring import CAM_FEATURES

    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    fields = [("row_id", s), ("input_uri", s), ("frame", i64), ("pane", i64), ("sha256", s), ("status", s),
              ("error", s), ("prob_malignant", f64), ("margin", f64), ("label", s), ("threshold", f64),
              ("model_id", s), ("cam", pa.binary()), ("cam_height", i64), ("cam_width", i64), ("cam_target", s),
              *[(f"cam_{k}", f64) for k in CAM_FEATURES], ("cam_in_field", f64),
              ("field_y0", i64), ("field_x0", i64), ("field_y1", i64), ("field_x1", i64), ("field_source", s),
              ("overlay_uri", s), ("width", i64), ("height", i64), ("decode_ms", f64), ("infer_ms", f64)]
    return pa.schema(fields)


@functools.cache
def _prep_schema():
    import pyarrow as pa

    s, i64, f64 = pa.string(), pa.int64(), pa.float64()
    return pa.schema([("row_id", s), ("input_uri", s), ("frame", i64), ("pane", i64), ("sha256", s),
                      ("status", s), ("error", s), ("pixels", pa.binary()), ("width", i64), ("height", i64),
                      ("geometry", s), ("field_model", pa.binary()), ("decode_ms", f64)])


def _score_key(input_uri: str, sha: str | None, frame: int, pane: int = 0) -> str:
    return hashlib.sha1(f"{input_uri}|{sha}|{frame}|{pane}".encode()).hexdigest()


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
            t = pq.read_table(path, filesystem=fs, columns=["input_uri", "sha256", "frame", "pane", "model_id"])
        except Exception:
            if quarantine:
                import fsspec

                ffs, root = fsspec.core.url_to_fs(storage.join(output, "_incomplete"))
                ffs.makedirs(root, exist_ok=True)
                ffs.mv(path, f"{root}/{path.rsplit('/', 1)[-1]}")
            continue
        cols = ("input_uri", "sha256", "frame", "pane", "model_id")
        for u, s, f, p, m in zip(*(t.column(c).to_pylist() for c in cols)):
            if m == model_id:
                keys.add(_score_key(u, s, f, p or 0))
    return keys


def _chunks(items, max_items: int, max_bytes: int):
    """Lists of at most `max_items` items and about `max_bytes` of inline data."""
    chunk, size = [], 0
    for item in items:
        chunk.append(item)
        size += len(item.data or b"")
        if len(chunk) >= max_items or size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


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
        from thyro.predictor import Predictor

        cfg = Config.model_validate(cfg_dict)
        s = cfg.score
        storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
        import torch

        # Ray gives a fractional-CPU actor one OpenMP thread; on a CPU node the
        # model is the bottleneck, so by default it may use the node's cores
        # (shared with the decode tasks, which mostly wait on I/O and zlib).
        torch.set_num_threads(s.threads or max(1, (os.cpu_count() or 1) // s.actors))
        self.p = Predictor(run, device=s.device, precision=s.precision, cam_size=s.cam_size,
                           cam_target=cfg.cam.target, cam_layer_name=cfg.cam.layer)

    def __call__(self, table):
        import pyarrow as pa
        import torch

        n = table.num_rows
        ok = [i for i, v in enumerate(table.column("status").to_pylist()) if v == "ok"]
        size = self.p.preset.image_size
        prob, margin, label, cam, target, ms = ([None] * n for _ in range(6))
        if ok:
            px = table.column("pixels").to_pylist()
            x = torch.from_numpy(np.stack([np.frombuffer(px[i], np.float32).reshape(3, size, size) for i in ok]))
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
        for name, values, typ in (("prob_malignant", prob, pa.float64()), ("margin", margin, pa.float64()),
                                  ("label", label, pa.string()), ("cam", cam, pa.binary()),
                                  ("cam_target", target, pa.string()), ("infer_ms", ms, pa.float64()),
                                  ("threshold", [self.p.threshold] * n, pa.float64()),
                                  ("model_id", [self.p.model_id] * n, pa.string()),
                                  ("cam_size", [self.p.cam_size] * n, pa.int64())):
            table = table.append_column(name, pa.array(values, type=typ))
        return table


def _finish(table, output: str, overlays: bool, region: float, preset: dict, cam_size: int):
    """Maps back to the original geometry, their shape features and cam_in_field, overlay PNGs;
    drops the pixels; the fixed output schema."""
    import pyarrow as pa

    from thyro.geometry import Geometry, model_map_to_crop
    from thyro.predictor import cam_in_field
    from thyro.scoring import CAM_FEATURES, cam_features, overlay_png
    from thyro.transforms import Preset

    p = Preset.from_dict(preset)
    batch = table.to_pydict()
    n = table.num_rows
    extra = {k: [None] * n for k in (*[f"cam_{k}" for k in CAM_FEATURES], "cam_in_field", "cam_height",
                                     "cam_width", "field_y0", "field_x0", "field_y1", "field_x1",
                                     "field_source", "overlay_uri")}
    pngs = {}
    for i in range(n):
        if batch["status"][i] != "ok":
            continue
        c = batch["cam_size"][i]
        g = Geometry.from_dict(json.loads(batch["geometry"][i]))
        cam_model = np.frombuffer(batch["cam"][i], np.float16).reshape(c, c).astype(np.float32)
        field = np.unpackbits(np.frombuffer(batch["field_model"][i], np.uint8))[:g.size * g.size]
        extra["cam_in_field"][i] = cam_in_field(cam_model, field.reshape(g.size, g.size).astype(bool))
        cam = model_map_to_crop(cam_model, g, cam_size)
        batch["cam"][i] = cam.astype(np.float16).tobytes()
        extra["cam_height"][i], extra["cam_width"][i] = cam.shape
        for k, v in cam_features(cam, region).items():
            extra[k][i] = v
        for k, v in zip(("field_y0", "field_x0", "field_y1", "field_x1"), g.box):
            extra[k][i] = v
        extra["field_source"][i] = g.field_source
        if overlays:
            uri = storage.join(output, "overlays", f"{batch['row_id'][i]}.png")
            img = np.frombuffer(batch["pixels"][i], np.float32).reshape(3, p.image_size, p.image_size)
            pngs[uri] = overlay_png(img, cam, p, g)
            extra["overlay_uri"][i] = uri
    # Overlays land before their rows: a row never points at a missing file.
    storage.write_many(pngs)
    batch.update(extra)
    schema = output_schema()
    return pa.table({f.name: pa.array([_py(v) for v in batch[f.name]], type=f.type) for f in schema}, schema=schema)


@dataclass
class ScoreResult:
    output: str
    counts: dict
    seconds: float


def run_score(cfg: Config, model: str, input_uri: str, output: str, log: Callable[[str], None] = print) -> ScoreResult:
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy

    from thyro.checkpoint import load_card
    from thyro.modelcard import package_versions
    from thyro.ray_common import init_ray
    from thyro.scoring import prepare
    from thyro.sources import Item, discover
    from thyro.transforms import Preset

    t0 = time.perf_counter()
    init_ray(cfg)
    s = cfg.score
    output = storage.absolute(output)
    input_uri = storage.absolute(input_uri)
    model = storage.absolute(model)
    card = load_card(model)
    model_id = card.get("model_id") or card["name"]
    preset = Preset.from_dict(card["inputs"]["preprocessing"])
    done = scored_keys(output, model_id, quarantine=True)
    done_ref = ray.put(done)
    log(f"score: {input_uri} with {model_id} -> {output} ({len(done)} rows already scored)")

    endpoint, region = cfg.storage.endpoint_url, cfg.storage.region

    def prep(items):
        """A block of items -> a block of decoded, preprocessed rows (never raises per input)."""
        import pyarrow as pa

        storage.configure(endpoint, region)  # this worker may not have the job's env
        skip = ray.get(done_ref)
        out = []
        for u, data, err in zip(*(items.column(c).to_pylist() for c in ("input_uri", "data", "error"))):
            for r in prepare(Item(u, data, err), preset, s.frames, s.hash_salt, s.skip_extensions):
                if _score_key(r["input_uri"], r["sha256"], r["frame"], r["pane"]) in skip:
                    continue
                px = r.pop("pixels")
                r["pixels"] = None if px is None else np.ascontiguousarray(px, np.float32).tobytes()
                out.append(r)
        return pa.Table.from_pylist(out, schema=_prep_schema())

    pred_dir = storage.join(output, PRED_DIR)
    fs, pred_path = storage.pyarrow_filesystem(pred_dir)
    counts = {"discovered": 0, "ok": 0, "error": 0, "skipped": 0, "previously_scored": len(done)}
    actor_args = {"run": model, "cfg_dict": config_to_dict(cfg)}
    finish_args = {"output": output, "overlays": s.overlays, "region": cfg.cam.region_threshold,
                   "preset": preset.to_dict(), "cam_size": s.cam_size}

    # Decoding a frame takes memory a GPU actor's node should not have to find
    # at once; the differing request is also what keeps Ray Data from fusing
    # these tasks into the predictor actor (it fuses only ops with equal remote
    # args), where decoding would leave the actor's GPU, or its threads, idle.
    cpu_task_args = {"num_cpus": s.cpus_per_task, "memory": s.task_memory_mib << 20}

    for chunk_no, chunk in enumerate(_chunks(discover(input_uri), s.chunk_size, s.chunk_mib << 20), 1):
        counts["discovered"] += len(chunk)
        before, t_chunk = _parquet_files(pred_dir), time.perf_counter()
        # Small blocks keep the stream moving: the actors start on the first
        # decoded batch instead of waiting for a quarter of the chunk.
        blocks = max(1, -(-len(chunk) // (2 * s.batch_size)))
        ds = ray.data.from_items([asdict(i) for i in chunk], override_num_blocks=blocks)
        ds = ds.map_batches(prep, batch_size=None, batch_format="pyarrow", **cpu_task_args)
        ds = ds.map_batches(_ScoreActor, fn_constructor_kwargs=actor_args, batch_size=s.batch_size,
                            compute=ActorPoolStrategy(min_size=1, max_size=s.actors),
                            num_cpus=s.cpus_per_actor, num_gpus=s.gpus_per_actor or None,
                            batch_format="pyarrow")
        ds = ds.map_batches(_finish, fn_kwargs=finish_args, batch_size=None, batch_format="pyarrow",
                            **cpu_task_args)
        ds.write_parquet(pred_path, filesystem=fs, min_rows_per_file=s.rows_per_file)
        written = _status_counts(pred_dir, _parquet_files(pred_dir) - before)
        for status, k in written.items():
            counts[status] = counts.get(status, 0) + k
        log(f"chunk {chunk_no}: {len(chunk)} inputs, {sum(written.values())} rows written "
            f"in {time.perf_counter() - t_chunk:.1f}s")
    manifest = {"model": model, "model_id": model_id, "input": input_uri, "output": output,
                "counts": counts, "config": config_to_dict(cfg), "model_card": card,
                "versions": package_versions(),
                "seconds": time.perf_counter() - t0}
    storage.write_bytes(storage.join(output, "run_manifest.json"), json.dumps(manifest, indent=2, default=str).encode())
    return ScoreResult(output=output, counts=counts, seconds=time.perf_counter() - t0)
