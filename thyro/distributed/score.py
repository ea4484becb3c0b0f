"""The score job: archives -> Ray Data -> predictions, Grad-CAM maps, Parquet, overlays.

Ray touchpoints around plain thyro code:
- discovery (`thyro.data.sources.discover`) is a generator; the driver hands Ray
  Data one bounded chunk of items at a time, so an archive of millions of files
  is never listed into memory at once;
- read + decode + preprocess (`thyro.model.score_stages.prepare_block`) run as CPU
  tasks, one small block of items each;
- `BatchScorer` (`thyro.model.batch_scorer`, an actor pool) loads the saved run once
  per actor and runs forward + Grad-CAM in one pass, and nothing else;
- `finish_rows` (`thyro.model.score_stages`, CPU tasks) adds CAM shape features (in
  pixels, and in mm where the DICOM gives the scale), writes the overlays, and with
  `redact_paths` the row_id -> path map, dropping the path from the rows;
- with fused stages (`pool_plan`) one `FusedScorer` actor runs all three on a block;
- `write_parquet` streams the rows to `<output>/predictions/` as they come
  (no materialised copy), `rows_per_file` rows a file;
- after each chunk, the driver reads back the rows that chunk wrote and adds
  one row per input file to `<output>/files/` (a cine loop: max and mean over
  its frames; `thyro.model.score_output`).
Resume: rows already in the output for the same model, row id (salted hash of
path, frame, pane) and content hash are skipped, so a killed job rerun ends
with every input exactly once; the key needs no path, so it holds with
redacted paths too.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

from thyro.config import Config, config_to_dict
from thyro.data import storage
from thyro.model.batch_scorer import BatchScorer, FusedScorer
from thyro.model.score_output import (PRED_DIR, file_ids, parquet_files, read_rows, scored_keys, status_counts,
                                      summarised_ids, write_file_rows)
from thyro.model.score_plan import decode_on_actor, pool_plan
from thyro.model.score_stages import finish_rows, prepare_block
from thyro.resume_guard import prepare_output


@dataclass
class ScoreResult:
    output: str
    counts: dict
    seconds: float


class _RayFusedScorer(FusedScorer):
    """`FusedScorer` built by Ray: the skip set comes as a reference into the object store (put
    once by the driver, not copied into every actor's arguments), resolved here."""

    def __init__(self, run: str, cfg_dict: dict, preset: dict, skip_ref: list, finish_args: dict):
        import ray

        super().__init__(run, cfg_dict, preset, ray.get(skip_ref[0]), finish_args)


def run_score(cfg: Config, model: str, input_uri: str, output: str, log: Callable[[str], None] = print) -> ScoreResult:
    # Before Ray and before any write: the rows already in `output` are skipped, so they must have
    # been made with the same score settings (row ids, frames, overlays, CAM).
    prepare_output(cfg, output, "score", log)
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
    prior = parquet_files(pred_dir)
    # On a resumed run a file's frames can lie in earlier files as well: its per-file row counts them.
    prior_ids = file_ids(pred_dir, prior, model_id) if done else set()
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
        before, t_chunk = parquet_files(pred_dir), time.perf_counter()
        # Small blocks keep the stream moving: the actors start on the first
        # decoded batch instead of waiting for a quarter of the chunk.
        blocks = max(1, -(-len(chunk) // (s.block_batches * s.batch_size)))
        ds = ray.data.from_items([asdict(i) for i in chunk], override_num_blocks=blocks)
        pool = {"compute": ActorPoolStrategy(min_size=plan.min_actors, max_size=plan.actors,
                                             max_tasks_in_flight_per_actor=s.tasks_in_flight_per_actor),
                "num_cpus": s.cpus_per_actor, "num_gpus": s.gpus_per_actor or None, "batch_format": "pyarrow"}
        if plan.fused:
            ds = ds.map_batches(_RayFusedScorer, batch_size=None, **pool, fn_constructor_kwargs={
                **actor_args, "preset": preset.to_dict(), "skip_ref": [done_ref], "finish_args": finish_args})
        else:
            ds = ds.map_batches(prep, batch_size=None, batch_format="pyarrow", **cpu_task_args)
            ds = ds.map_batches(BatchScorer, fn_constructor_kwargs=actor_args, batch_size=s.batch_size, **pool)
            ds = ds.map_batches(finish_rows, fn_kwargs=finish_args, batch_size=None, batch_format="pyarrow",
                                **cpu_task_args)
        ds.write_parquet(pred_path, filesystem=fs, min_rows_per_file=s.rows_per_file)
        new = parquet_files(pred_dir) - before
        written = status_counts(pred_dir, new)
        for status, k in written.items():
            counts[status] = counts.get(status, 0) + k
        # Every frame of an input is in the chunk that discovered it: the chunk's own files (plus,
        # resuming, earlier rows of the same inputs) hold whole files, so memory stays one chunk's.
        rows = read_rows(pred_dir, new, model_id=model_id)
        if rows is not None and prior_ids:
            again = set(rows.column("file_id").to_pylist()) & prior_ids
            if again:
                import pyarrow as pa

                rows = pa.concat_tables([rows, read_rows(pred_dir, prior, again, model_id)])
        counts["files"] += write_file_rows(output, rows)
        log(f"chunk {chunk_no}: {len(chunk)} inputs, {sum(written.values())} rows written "
            f"in {time.perf_counter() - t_chunk:.1f}s")
    if done:
        # A run killed between a chunk's rows and its per-file rows left inputs with no per-file
        # row (and none of their frames to score now): summarised here, from what is on storage.
        missing = file_ids(pred_dir, parquet_files(pred_dir), model_id) - summarised_ids(output, model_id)
        if missing:
            counts["files"] += write_file_rows(output, read_rows(pred_dir, parquet_files(pred_dir), missing, model_id))
    manifest = {"model": model, "model_id": model_id, "input": input_uri, "output": output,
                "counts": counts, "config": config_to_dict(cfg), "model_card": card,
                "versions": package_versions(),
                "seconds": time.perf_counter() - t0}
    storage.write_bytes(storage.join(output, "run_manifest.json"), json.dumps(manifest, indent=2, default=str).encode())
    return ScoreResult(output=output, counts=counts, seconds=time.perf_counter() - t0)
