"""`thyro pretrain` on Ray: unlabelled archives -> Ray Data -> Ray Train (SimSiam).

Ray touchpoints around plain thyro code (`thyro.model.ssl`, `thyro.image.views`, `thyro.model.pretraining`):
- scan (once): discovery streams in bounded chunks, as in the score job
  (`score.chunk_size` inputs, `score.chunk_mib` of inline tar bytes); CPU tasks
  read, hash, decode and crop each input with the score job's
  `thyro.model.scoring.prepare`, so a bad file becomes the same error row, written to
  `<out>/errors/`, and never stops the run. The inputs that gave images form
  the index `<out>/index/` (their URI, a tar member's bytes, their content
  hash and how many images they give), which fixes the steps per epoch;
- train: a `TorchTrainer` whose "train" dataset is the index read back by Ray
  Data and mapped, in CPU tasks, through read + decode + crop + `TwoViews`;
  each worker iterates its shard (`get_dataset_shard`), DDP when
  ray.num_workers > 1. Nothing of the archive passes through the driver;
- checkpoints (model, optimizer, scheduler, step, epoch, history) every
  `pretrain.checkpoint_every_steps` steps in Ray Train's storage
  (`<out>/ray/pretrain/`, or `ray.storage_path`). The same command run again
  restores the run: Train V2 reads its checkpoint manager's snapshot under the
  same name and storage path, and the loop continues from the checkpoint's
  step (a resumed epoch runs only its remaining steps);
- the driver writes `backbone.pt` + `metadata.json` (`save_backbone`) from the
  final checkpoint, `config.yaml` and `summary.json`.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from thyro.config import Config, config_to_dict
from thyro.data import storage
from thyro.resume_guard import prepare_output

RUN_NAME = "pretrain"
INDEX_DIR = "index"
ERRORS_DIR = "errors"
INDEX_DONE = "_complete.json"  # written last: the scan is complete
STATE_FILE = "state.pt"
# Views are shuffled within this many batches on each worker (they cost
# 2 x 3 x S x S float32 each, so the buffer is kept to a few batches).
SHUFFLE_BATCHES = 4


def pretrain_preset(cfg: Config):
    """The preset that crops every input (the deterministic part; the views add the rest)."""
    from thyro.image.preset import resolve_preset

    return resolve_preset(cfg.pretrain.preset, image_size=cfg.pretrain.image_size)


# --- pure helpers -----------------------------------------------------------------------

def steps_per_epoch(n_images: int, batch_size: int, workers: int) -> int:
    """Full batches each worker takes per epoch (every worker the same number, or DDP would hang)."""
    steps = n_images // (batch_size * workers)
    if steps < 1:
        raise ValueError(f"pretraining needs at least pretrain.batch_size x ray.num_workers = "
                         f"{batch_size * workers} images; the input gave {n_images}")
    return steps


def resume_point(step: int, per_epoch: int) -> tuple[int, int]:
    """(epoch, steps left in it) for a run restored at global `step`."""
    return step // per_epoch, per_epoch - step % per_epoch


def checkpoint_due(step: int, every: int, total: int) -> bool:
    """A checkpoint after this step: every `every` steps; the last one is saved by the run's end."""
    return step % every == 0 and step < total


def hash_prefix(sha256_hex: str) -> int:
    """The first 64 bits of a content hash: a million images collide with probability ~3e-8,
    and a set of them costs 8 bytes an image in the driver."""
    return int(sha256_hex[:16], 16)


def add_distinct(seen: np.ndarray, sha256_hexes) -> np.ndarray:
    """`seen` (sorted distinct hash prefixes, uint64) with those of `sha256_hexes` added; its
    length is the number of distinct inputs so far, whichever chunk each copy came in."""
    return np.union1d(seen, np.array([hash_prefix(h) for h in sha256_hexes], np.uint64))


def take(batches, n: int):
    """At most `n` items of `batches`, closing it after (a Ray Data shard's epoch ends there)."""
    it = iter(batches)
    try:
        for _ in range(n):
            b = next(it, None)
            if b is None:
                return
            yield b
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


# --- scan: inputs -> error rows + the index ----------------------------------------------

def _no_pixels(img, c, preset, regions=None) -> dict:
    return {}


def _crop_and_mask(img, c, preset, regions=None) -> dict:
    return {"image": c.image, "mask": c.field_mask}


@dataclass
class ScanCounts:
    discovered: int = 0
    images: int = 0        # images to pretrain on (frames x panes of the indexed inputs)
    files: int = 0         # inputs that gave at least one image
    error: int = 0
    skipped: int = 0
    distinct_images: int = 0  # distinct content hashes of those inputs


def _read_args(cfg: Config) -> dict:
    s = cfg.score
    return {"frames": s.frames, "salt": s.hash_salt, "skip_extensions": s.skip_extensions,
            "frame_step": s.frame_step, "max_frames": s.max_frames}


def scan_block(items, preset, read_args: dict):
    """A block of discovered items (input_uri, data, error) -> one row per input's frame / pane /
    problem (input_uri, file_id, row_id, frame, pane, sha256, status, error), no pixels."""
    import pyarrow as pa

    from thyro.data.sources import Item
    from thyro.model.scoring import prepare

    out = []
    for u, data, err in zip(*(items.column(c).to_pylist() for c in ("input_uri", "data", "error"))):
        for r in prepare(Item(u, data, err), preset, crop_row=_no_pixels, **read_args):
            out.append({k: r[k] for k in ("input_uri", "file_id", "row_id", "frame", "pane", "sha256",
                                          "status", "error")})
    return pa.Table.from_pylist(out, schema=_scan_schema())


def _scan_schema():
    import pyarrow as pa

    s, i64 = pa.string(), pa.int64()
    return pa.schema([("input_uri", s), ("file_id", s), ("row_id", s), ("frame", i64), ("pane", i64),
                      ("sha256", s), ("status", s), ("error", s)])


def _index_schema():
    import pyarrow as pa

    return pa.schema([("input_uri", pa.string()), ("data", pa.binary()), ("sha256", pa.string()),
                      ("n_images", pa.int64())])


def _scan(cfg: Config, input_uri: str, out: str, log: Callable[[str], None]) -> tuple[ScanCounts, str]:
    """Error rows to <out>/errors/, the index to <out>/index/; one chunk of inputs in the driver at a time.
    A complete scan (its marker written last) is reused when the same command runs again."""
    import pyarrow as pa
    import ray
    import ray.data

    from thyro.data.sources import chunks, discover

    index = storage.join(out, INDEX_DIR)
    done = storage.join(index, INDEX_DONE)
    if storage.exists(done):
        c = ScanCounts(**json.loads(storage.read_bytes(done)))
        log(f"scan: reusing {index} ({c.images} images from {c.files} inputs)")
        return c, index
    import fsspec

    for d in (index, storage.join(out, ERRORS_DIR)):  # parts of a scan a kill cut short
        fs, root = fsspec.core.url_to_fs(d)
        if fs.exists(root):
            fs.rm(root, recursive=True)
    s, limit = cfg.score, cfg.pretrain.max_images
    preset, read_args = pretrain_preset(cfg), _read_args(cfg)
    endpoint, region = cfg.storage.endpoint_url, cfg.storage.region

    def scan(items):
        storage.configure(endpoint, region)  # this worker may not have the job's env
        return scan_block(items, preset, read_args)

    counts, hashes = ScanCounts(), np.zeros(0, np.uint64)
    for chunk_no, chunk in enumerate(chunks(discover(input_uri), s.chunk_size, s.chunk_mib << 20)):
        if limit and counts.images >= limit:
            break
        t0 = time.perf_counter()
        counts.discovered += len(chunk)
        blocks = max(1, min(len(chunk), 64, -(-len(chunk) // 32)))
        ds = ray.data.from_items([asdict(i) for i in chunk], override_num_blocks=blocks)
        ds = ds.map_batches(scan, batch_size=None, batch_format="pyarrow", num_cpus=s.cpus_per_task,
                            memory=s.task_memory_mib << 20)
        rows = [b for b in ds.iter_batches(batch_size=None, batch_format="pyarrow") if b.num_rows]
        rows = pa.concat_tables(rows).to_pylist() if rows else []
        ok: dict[str, list] = {}
        bad = []
        for r in rows:
            if r["status"] == "ok":
                ok.setdefault(r["input_uri"], [0, r["sha256"]])[0] += 1
            else:
                bad.append(r)
        index_rows = []
        for item in chunk:  # discovery order, so max_images keeps the first images found
            if item.input_uri not in ok or (limit and counts.images >= limit):
                continue
            n, sha = ok[item.input_uri]
            n = min(n, limit - counts.images) if limit else n
            index_rows.append({"input_uri": item.input_uri, "data": item.data, "sha256": sha, "n_images": n})
            counts.images += n
            counts.files += 1
        hashes = add_distinct(hashes, [x["sha256"] for x in index_rows])
        counts.error += sum(r["status"] == "error" for r in bad)
        counts.skipped += sum(r["status"] == "skipped" for r in bad)
        files = {}
        if index_rows:
            files[storage.join(index, f"part-{chunk_no:06d}.parquet")] = storage.parquet_bytes(
                pa.Table.from_pylist(index_rows, schema=_index_schema()))
        if bad:
            files[storage.join(out, ERRORS_DIR, f"part-{chunk_no:06d}.parquet")] = storage.parquet_bytes(
                pa.Table.from_pylist(bad, schema=_scan_schema()))
        storage.write_many(files)
        log(f"scan chunk {chunk_no + 1}: {len(chunk)} inputs, {len(index_rows)} with images, "
            f"{len(bad)} error/skipped rows in {time.perf_counter() - t0:.1f}s")
    counts.distinct_images = int(len(hashes))
    storage.write_bytes(done, json.dumps(asdict(counts)).encode())
    return counts, index


def views_block(files, preset, read_args: dict, size: int, strengths: dict) -> dict:
    """Index rows -> {"v1", "v2"}: (N, 3, S, S) float32, two views of each image (frame / pane)
    the scan counted for the input. An input that no longer reads gives nothing."""
    from thyro.data.sources import Item
    from thyro.image.views import TwoViews
    from thyro.model.scoring import prepare

    views = TwoViews(size, preset, **strengths)
    v1, v2 = [], []
    for u, data, n in zip(*(files.column(c).to_pylist() for c in ("input_uri", "data", "n_images"))):
        rows = [r for r in prepare(Item(u, data), preset, crop_row=_crop_and_mask, **read_args)
                if r["status"] == "ok"]
        for r in rows[:n]:
            a, b = views(r["image"], r["mask"])
            v1.append(a.numpy())
            v2.append(b.numpy())
    empty = np.zeros((0, 3, size, size), np.float32)
    return {"v1": np.stack(v1) if v1 else empty, "v2": np.stack(v2) if v2 else empty}


# --- inside Ray Train -----------------------------------------------------------------------

def _save_state(state: dict):
    import ray.train
    import torch

    d = tempfile.mkdtemp(prefix="thyro-pretrain-")
    torch.save(state, os.path.join(d, STATE_FILE))
    return ray.train.Checkpoint.from_directory(d)


def load_state(checkpoint) -> dict:
    import torch

    with checkpoint.as_directory() as d:
        with open(os.path.join(d, STATE_FILE), "rb") as f:
            return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)


def _train_worker(config: dict) -> None:
    """One Ray Train worker: SimSiam on its shard of the views, checkpoints, restores."""
    import ray.train
    import ray.train.torch
    import torch

    from thyro.distributed.common import worker_setup
    from thyro.model.pretraining import make_optimizer, pretrain_one_epoch
    from thyro.model.ssl import SimSiam

    cfg = Config.model_validate(config["cfg"])
    p = cfg.pretrain
    device = torch.device(worker_setup(cfg))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    say = print if rank == 0 else (lambda s: None)
    per_epoch = config["steps_per_epoch"]
    total = p.epochs * per_epoch

    torch.manual_seed(p.seed)
    model = SimSiam.from_config(p)
    ckpt = ray.train.get_checkpoint()
    state = load_state(ckpt) if ckpt else None
    if state:
        model.load_state_dict(state["model"])
    model = model.to(device)
    if p.channels_last:  # before any DDP wrapping, which fixes parameter layouts
        model = model.to(memory_format=torch.channels_last)
    if world > 1:
        model = ray.train.torch.prepare_model(model)
    optimizer, scheduler = make_optimizer(model, p, per_epoch)
    step, history = 0, []
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, history = int(state["step"]), list(state["history"])
        say(f"pretrain: resuming from the checkpoint at step {step} of {total}")
    resumed_from = step
    unwrapped = getattr(model, "module", model)

    def snapshot(epoch: int) -> dict:
        return {"model": unwrapped.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch, "history": history}

    def report(metrics: dict, epoch: int, with_checkpoint: bool) -> None:
        ck = _save_state(snapshot(epoch)) if with_checkpoint and rank == 0 else None
        ray.train.report({**metrics, "step": step, "epoch": epoch, "resumed_from_step": resumed_from},
                         checkpoint=ck, checkpoint_dir_name=f"step-{step:08d}" if with_checkpoint else None)

    shard = ray.train.get_dataset_shard("train")
    t_run, images_run = time.perf_counter(), 0
    epoch, left = resume_point(step, per_epoch)
    while epoch < p.epochs:
        def on_step(k: int, rec: dict, epoch=epoch) -> None:
            nonlocal step
            step += 1
            if checkpoint_due(step, p.checkpoint_every_steps, total):
                report({"loss": rec["loss"]}, epoch, True)

        batches = shard.iter_torch_batches(batch_size=p.batch_size, drop_last=True, dtypes=torch.float32,
                                           local_shuffle_buffer_size=SHUFFLE_BATCHES * p.batch_size)
        pairs = ((b["v1"], b["v2"]) for b in take(batches, left))
        rec = pretrain_one_epoch(model, pairs, optimizer, device, p.precision, p.channels_last, scheduler,
                                 on_step=on_step)
        images_run += rec["images"] * world
        ips = rec["images"] * world / rec["seconds"] if rec["seconds"] > 0 else float("nan")
        history.append({"epoch": epoch + 1, "loss": rec["loss"], "z_std": rec.get("z_std"), "steps": rec["steps"],
                        "images_per_s": ips, "step": step})
        say(f"pretrain epoch {epoch + 1}/{p.epochs}: loss {rec['loss']:.4f}, z_std {rec.get('z_std', float('nan')):.3f}"
            f" (0: collapsed), {ips:.1f} images/s, step {step}/{total}")
        if rec["steps"] < left:
            say(f"pretrain epoch {epoch + 1}: the data ran out after {rec['steps']} of {left} steps")
        epoch, left = epoch + 1, per_epoch
        report({"loss": rec["loss"], "images_per_s": ips}, epoch, False)
    seconds = time.perf_counter() - t_run
    report({"loss": history[-1]["loss"] if history else float("nan"), "done": True,
            "images_trained": images_run, "train_seconds": seconds,
            "images_per_s": images_run / seconds if images_run else float("nan")}, p.epochs, True)


# --- driver -----------------------------------------------------------------------------------

@dataclass
class PretrainResult:
    out: str
    counts: dict
    steps: int
    resumed_from_step: int
    images_per_s: float
    seconds: float


def run_pretrain(cfg: Config, input_uri: str, out: str, log: Callable[[str], None] = print) -> PretrainResult:
    """Pretrain `cfg.pretrain.backbone` on every image under `input_uri` (anything the score job
    reads); writes to `out` (local or URI) and resumes there when run again, with the same config."""
    # Before Ray and before any write: the checkpoint and the scan were made under the saved config.
    prepare_output(cfg, out, "pretrain", log)
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from thyro.distributed.common import init_ray
    from thyro.model.pretraining import pretrain_card, save_backbone
    from thyro.model.ssl import SimSiam

    t0 = time.perf_counter()
    p, r = cfg.pretrain, cfg.ray
    init_ray(cfg)
    out, input_uri = storage.absolute(out), storage.absolute(input_uri)
    log(f"pretrain: {p.method} {p.backbone} on {input_uri} -> {out}")
    counts, index = _scan(cfg, input_uri, out, log)
    per_epoch = steps_per_epoch(counts.images, p.batch_size, r.num_workers)
    log(f"pretrain: {counts.images} images ({counts.distinct_images} distinct inputs by content), "
        f"{counts.error} error rows, {counts.skipped} skipped; {p.epochs} epochs x {per_epoch} steps "
        f"of {p.batch_size} x {r.num_workers} worker(s)")

    preset, read_args, s = pretrain_preset(cfg), _read_args(cfg), cfg.score
    endpoint, region = cfg.storage.endpoint_url, cfg.storage.region
    size, strengths = p.image_size, p.view_strengths()

    def views(files):
        storage.configure(endpoint, region)
        return views_block(files, preset, read_args, size, strengths)

    fs, index_path = storage.pyarrow_filesystem(index)
    ds = ray.data.read_parquet(index_path, filesystem=fs).randomize_block_order()
    ds = ds.map_batches(views, batch_size=max(1, min(p.batch_size, 32)), batch_format="pyarrow",
                        num_cpus=s.cpus_per_task, memory=s.task_memory_mib << 20)

    storage_path = r.storage_path or storage.join(out, "ray")
    sfs, spath = storage.pyarrow_filesystem(storage_path)
    resources = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.use_gpu else {})}
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"cfg": config_to_dict(cfg), "steps_per_epoch": per_epoch},
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=RUN_NAME, storage_path=spath, storage_filesystem=sfs,
                             failure_config=FailureConfig(max_failures=r.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": ds},
    )
    result = trainer.fit()
    m = result.metrics or {}
    state = load_state(result.checkpoint)
    model = SimSiam.from_config(p)
    model.load_state_dict(state["model"])
    history = state["history"]
    throughput = {"images_per_s": m.get("images_per_s"), "images_trained": m.get("images_trained"),
                  "train_seconds": m.get("train_seconds"), "workers": r.num_workers, "use_gpu": r.use_gpu}
    card = pretrain_card(method=p.method, backbone=p.backbone, epochs=p.epochs, steps=int(state["step"]),
                         distinct_images=counts.distinct_images, image_size=p.image_size,
                         preset=preset.to_dict(), views=strengths,
                         final_loss=history[-1]["loss"] if history else float("nan"), history=history,
                         optimizer={"optimizer": p.optimizer, "lr": p.lr, "weight_decay": p.weight_decay,
                                    "batch_size": p.batch_size, "workers": r.num_workers},
                         throughput=throughput, sources=[input_uri], name=cfg.name,
                         data_counts={"images": counts.images, "inputs": counts.files, "error_rows": counts.error,
                                      "skipped_rows": counts.skipped})
    save_backbone(out, model, card)
    seconds = time.perf_counter() - t0
    summary = {"input": input_uri, "out": out, "counts": asdict(counts), "epochs": p.epochs,
               "steps_per_epoch": per_epoch, "steps": int(state["step"]), "planned_steps": p.epochs * per_epoch,
               "resumed_from_step": int(m.get("resumed_from_step", 0)), "final_loss": card["training"]["final_loss"],
               "images_per_s": m.get("images_per_s"), "images_trained": m.get("images_trained"),
               "train_seconds": m.get("train_seconds"), "seconds": seconds, "history": history}
    storage.write_bytes(storage.join(out, "summary.json"), json.dumps(summary, indent=2, default=str).encode())
    return PretrainResult(out=out, counts=asdict(counts), steps=int(state["step"]),
                          resumed_from_step=summary["resumed_from_step"],
                          images_per_s=float(m.get("images_per_s") or float("nan")), seconds=seconds)
