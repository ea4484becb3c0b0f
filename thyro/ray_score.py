"""The score job: archives -> Ray Data -> predictions, Grad-CAM maps, Parquet, overlays.

Ray touchpoints around plain thyro code:
- discovery (`thyro.sources.discover`) is a generator; the driver hands Ray
  Data one bounded chunk of items at a time, so an archive of millions of files
  is never listed into memory at once;
- read + decode + preprocess (`thyro.scoring.prepare`) run as CPU tasks;
- `_ScoreActor` (an actor pool) loads the saved run once per actor and runs
  forward + Grad-CAM in one pass, writes overlays, adds shape features;
- `write_parquet` appends each chunk's files to `<output>/predictions/`.
Resume: rows already in the output for the same model and the same content
hash are skipped, so a killed job rerun ends with every input exactly once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from thyro import storage
from thyro.config import Config, config_to_dict

PRED_DIR = "predictions"


def output_schema():
    """The Parquet schema, fixed: a chunk of only error rows must not change a column's type."""
    import pyarrow as pa

    from thyro.scoring import CAM_FEATURES

    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    fields = [("row_id", s), ("input_uri", s), ("frame", i64), ("sha256", s), ("status", s), ("error", s),
              ("prob_malignant", f64), ("label", s), ("threshold", f64), ("model_id", s),
              ("cam", pa.binary()), ("cam_size", i64), *[(f"cam_{k}", f64) for k in CAM_FEATURES],
              ("overlay_uri", s), ("width", i64), ("height", i64), ("decode_ms", f64), ("infer_ms", f64)]
    return pa.schema(fields)


def _score_key(input_uri: str, sha: str | None, frame: int) -> str:
    return hashlib.sha1(f"{input_uri}|{sha}|{frame}".encode()).hexdigest()


def scored_keys(output: str, model_id: str, quarantine: bool = False) -> set[str]:
    """Keys of rows already written for `model_id`.

    A file cut off by a kill is unreadable: with `quarantine` it is moved to
    `<output>/_incomplete/` (kept, not deleted) and its rows are scored again.
    """
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    d = storage.join(output, PRED_DIR)
    if not storage.exists(d):
        return set()
    fs, path = storage.pyarrow_filesystem(d)
    keys: set[str] = set()
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if not info.path.endswith(".parquet"):
            continue
        try:
            t = pq.read_table(info.path, filesystem=fs, columns=["input_uri", "sha256", "frame", "model_id"])
        except Exception:
            if quarantine:
                import fsspec

                ffs, root = fsspec.core.url_to_fs(storage.join(output, "_incomplete"))
                ffs.makedirs(root, exist_ok=True)
                ffs.mv(info.path, f"{root}/{info.base_name}")
            continue
        for u, s, f, m in zip(*(t.column(c).to_pylist() for c in ("input_uri", "sha256", "frame", "model_id"))):
            if m == model_id:
                keys.add(_score_key(u, s, f))
    return keys


def _py(v):
    """numpy scalars / NaN-for-missing -> plain Python values for pyarrow."""
    if v is None:
        return None
    if isinstance(v, float) and v != v:
        return None
    return v.item() if hasattr(v, "item") else v


class _ScoreActor:
    """Loaded once per actor: the saved run, its preset and threshold."""

    def __init__(self, run: str, cfg_dict: dict, output: str):
        from thyro.predictor import Predictor

        cfg = Config.model_validate(cfg_dict)
        s = cfg.score
        storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
        if s.threads:
            import torch
            torch.set_num_threads(s.threads)
        self.p = Predictor(run, device=s.device, precision=s.precision, cam_size=s.cam_size, cam_target=cfg.cam.target)
        self.output, self.overlays, self.region = output, s.overlays, cfg.cam.region_threshold
        self.schema = output_schema()

    def __call__(self, table):
        import torch

        from thyro.scoring import CAM_FEATURES, cam_features, overlay_png

        batch = table.to_pydict()
        n = len(batch["input_uri"])
        status = list(batch["status"])
        ok = [i for i in range(n) if status[i] == "ok"]
        size = self.p.preset.image_size
        cols = {k: [None] * n for k in ("prob_malignant", "label", "cam", "overlay_uri", "infer_ms")}
        feats = {f"cam_{k}": [None] * n for k in CAM_FEATURES}
        if ok:
            x = torch.from_numpy(np.stack([np.frombuffer(batch["pixels"][i], np.float32).reshape(3, size, size)
                                           for i in ok]))
            t0 = time.perf_counter()
            out = self.p.predict_tensor(x)
            ms = (time.perf_counter() - t0) * 1000 / len(ok)
            for j, i in enumerate(ok):
                cam = out["cam"][j]
                cols["prob_malignant"][i] = float(out["prob_malignant"][j])
                cols["label"][i] = "malignant" if out["label"][j] else "benign"
                cols["cam"][i] = cam.tobytes()
                cols["infer_ms"][i] = ms
                for k, v in cam_features(cam, self.region).items():
                    feats[k][i] = v
                if self.overlays:
                    uri = storage.join(self.output, "overlays", f"{batch['row_id'][i]}.png")
                    storage.write_bytes(uri, overlay_png(x[j].numpy(), cam, self.p.preset))
                    cols["overlay_uri"][i] = uri
        res = {k: batch[k] for k in ("row_id", "input_uri", "frame", "sha256", "status", "error", "width",
                                     "height", "decode_ms")}
        res.update(cols)
        res.update(feats)
        res["threshold"] = [self.p.threshold] * n
        res["model_id"] = [self.p.model_id] * n
        res["cam_size"] = [self.p.cam_size] * n
        import pyarrow as pa

        return pa.table({f.name: pa.array([_py(v) for v in res[f.name]], type=f.type) for f in self.schema},
                        schema=self.schema)


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

    def prep(row: dict) -> list[dict]:
        storage.configure(endpoint, region)  # this worker may not have the job's env
        rows = prepare(Item(row["input_uri"], row["data"], row["error"]), preset, s.frames, s.hash_salt)
        skip = ray.get(done_ref)
        out = []
        for r in rows:
            if _score_key(r["input_uri"], r["sha256"], r["frame"]) in skip:
                continue
            px = r.pop("pixels")
            r["pixels"] = None if px is None else np.ascontiguousarray(px, np.float32).tobytes()
            out.append(r)
        return out

    counts = {"discovered": 0, "ok": 0, "error": 0, "previously_scored": len(done)}
    items = discover(input_uri)
    chunk_no = 0
    while True:
        chunk = list(itertools.islice(items, s.chunk_size))
        if not chunk:
            break
        counts["discovered"] += len(chunk)
        ds = ray.data.from_items([asdict(i) for i in chunk], override_num_blocks=max(1, min(len(chunk), 4 * s.actors)))
        ds = ds.flat_map(prep, num_cpus=s.cpus_per_read_task)
        ds = ds.map_batches(_ScoreActor, fn_constructor_kwargs={"run": model, "cfg_dict": config_to_dict(cfg),
                                                                "output": output},
                            batch_size=s.batch_size, compute=ActorPoolStrategy(min_size=1, max_size=s.actors),
                            num_cpus=s.cpus_per_actor, num_gpus=s.gpus_per_actor or None,
                            batch_format="pyarrow")
        before = time.perf_counter()
        stats = ds.materialize()
        n_rows = stats.count()
        if n_rows:
            stats.write_parquet(storage.join(output, PRED_DIR))
            for status, k in stats.select_columns(["status"]).to_pandas()["status"].value_counts().items():
                counts[status] = counts.get(status, 0) + int(k)
        chunk_no += 1
        log(f"chunk {chunk_no}: {len(chunk)} inputs, {n_rows} rows scored in {time.perf_counter() - before:.1f}s")
    manifest = {"model": model, "model_id": model_id, "input": input_uri, "output": output,
                "counts": counts, "config": config_to_dict(cfg), "model_card": card,
                "versions": package_versions(),
                "seconds": time.perf_counter() - t0}
    storage.write_bytes(storage.join(output, "run_manifest.json"), json.dumps(manifest, indent=2, default=str).encode())
    return ScoreResult(output=output, counts=counts, seconds=time.perf_counter() - t0)
