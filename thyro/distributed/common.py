"""Ray touchpoints shared by the experiment and tune jobs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from thyro.config import Config
from thyro.data import storage


def ray_env() -> dict[str, str]:
    """Ray settings every process of a job needs (a value already in the environment wins).

    A Train worker group waits at most 60 s for its resources by default; with
    trials queued behind each other on a small machine that is too short, and
    a failed start costs the trial. A Train controller sees its workers start and
    finish at its next poll, every 2 s by default: a trial waits for several; at
    0.5 s a Tune trial driving an empty TorchTrainer took 12.9-14.2 s here, against
    16.9-17.4 s at 2 s (the polls are small RPCs).
    """
    defaults = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "1800", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in defaults}


def init_ray(cfg: Config) -> dict[str, str]:
    """Connect to (or start) Ray; return the env vars the job's workers receive.

    Workers get the storage endpoint settings, never credentials: those come
    from each node's own environment or workload identity.
    """
    import ray

    env = {**storage.configure(cfg.storage.endpoint_url, cfg.storage.region), **ray_env()}
    if not ray.is_initialized():
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
        # A cluster this process starts inherits os.environ (set above), so its workers need no
        # runtime_env; without one, the job's first actors take the worker processes Ray
        # prestarted at boot instead of waiting for new ones (score job, 1,000 images on 2
        # cores: actors start ~1.5 s sooner, the run takes ~2 s less). A cluster we join gets
        # the variables through the runtime_env, as before.
        own = _starts_own_cluster(address)
        if own:
            # One node that lives and dies with this job: no node drain to watch for. Ray Train's
            # preemption watcher is one more process per trial (2.4 core-s each on 2 cores, of
            # ~15 core-s of helper processes per trial). Set before ray.init: the cluster inherits it.
            os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        ray.init(address=address, runtime_env=None if own else {"env_vars": env},
                 log_to_driver=True, logging_level="WARNING")
    return env


def _starts_own_cluster(address: str | None) -> bool:
    """Whether `ray.init(address=address)` starts a new local cluster rather than joining one
    (Ray's own rule: an address, RAY_ADDRESS, or a cluster `ray start` left on this machine means
    join). Unsure -> False: the env then travels in a runtime_env, which is always correct."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(address) is None
    except Exception:
        return False


@dataclass
class JobPaths:
    out: str           # absolute output folder or URI
    manifest: str      # manifest.parquet
    splits: str        # splits.parquet
    storage_path: str  # where Ray Tune/Train keep their state
    fs: object         # pyarrow filesystem for storage_path
    fs_path: str       # storage_path without its scheme


def job_setup(cfg: Config, out: str, log: Callable[[str], None], models: list[str] | None = None) -> JobPaths:
    """What every Ray job does first (after `thyro.resume_guard.prepare_output`): fetch weights once,
    connect, resolve the output, write the inputs once.
    `models`: the architectures whose weights the job needs (None: model.name and experiment.models)."""
    from thyro.data.inputs import prepare_inputs
    from thyro.model.weights import resolve_weights

    before = cfg.model.weights
    resolve_weights(cfg, storage.absolute(out), models=models)  # before Ray: a missing file fails here, not in a worker
    if cfg.model.weights != before:
        log(f"weights: torchvision's ImageNet files, read by the workers from {cfg.model.weights}")
    init_ray(cfg)
    out = storage.absolute(out)
    m_uri, s_uri = prepare_inputs(cfg, out, log)
    storage_path = cfg.ray.storage_path or storage.join(out, "ray")
    fs, path = storage.pyarrow_filesystem(storage_path)
    return JobPaths(out, m_uri, s_uri, storage_path, fs, path)


def make_trainer(worker: Callable[[dict], None], loop_config: dict, cfg: Config, name: str, storage_path: str,
                 max_failures: int | None = None):
    """A TorchTrainer whose every report reaches the enclosing Tune trial.

    `max_failures`: restarts of the worker group (None: ray.max_failures). A job
    whose Tune trials retry already passes 0, or every failure is retried
    (max_failures + 1)^2 - 1 times, a deterministic error included.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    r = cfg.ray
    resources = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.use_gpu else {})}
    fs, path = storage.pyarrow_filesystem(storage_path)
    return TorchTrainer(
        worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(
                                 max_failures=r.max_failures if max_failures is None else max_failures),
                             callbacks=[TuneReportCallback()]),
    )


def trial_setup(cfg: Config) -> None:
    """Inside a Tune trial: storage endpoint, and the Train settings its controller
    inherits (Ray Train propagates them to the controller and workers)."""
    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    ray_env()


def own_threads(cpus_per_worker: float) -> int:
    """Torch threads a worker runs with from its CPU allotment (whole CPUs, at least one)."""
    return max(1, int(cpus_per_worker))


def elastic_threads(own: int, free_cpus: float, node_cpus: float, cap: int = 0) -> int:
    """Torch threads for a single-worker trial at an epoch boundary: its own `own`, plus
    every whole CPU of its node that no task, actor or placement group holds (`free_cpus`,
    Ray's logical count), at most the node's `node_cpus` and `cap` (train.threads; 0: none).
    A trial that is alone on a 2-CPU node takes both; two trials keep one each."""
    n = own + max(0, int(free_cpus + 1e-6))  # Ray counts resources in 1e-4 steps
    n = min(n, max(1, int(node_cpus + 1e-6)))
    if cap:
        n = min(n, cap)
    return max(1, n)


def node_cpus_free() -> tuple[float, float] | None:
    """(free, total) logical CPUs of the node this process runs on; None if Ray cannot say."""
    import ray
    from ray._private import state  # DeveloperAPI: Ray has no public per-node view of free resources

    try:
        node = ray.get_runtime_context().get_node_id()
        free = state.available_resources_per_node().get(node, {}).get("CPU", 0.0)
        total = state.total_resources_per_node().get(node, {}).get("CPU", 0.0)
    except Exception:  # a slow or restarting GCS: keep the threads as they are
        return None
    return float(free), float(total)


def worker_setup(cfg: Config) -> str:
    """Storage, thread count and device inside a Ray Train worker; returns the device.

    Set from the config in every process rather than through the job's runtime
    env, which a driver that joined an existing Ray session does not control.
    """
    import ray.train.torch
    import torch

    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    torch.set_num_threads(own_threads(cfg.ray.cpus_per_worker))
    return str(ray.train.torch.get_device())


def _crop_part(directory: str, k: int, paths: list[str], preset: dict, endpoint: str | None,
               region: str | None) -> int:
    from thyro.data import crop_cache
    from thyro.image.preset import Preset

    storage.configure(endpoint, region)
    return crop_cache.write_part(directory, k, paths, Preset.from_dict(preset))


def build_crop_caches(cfg: Config, manifest_uri: str, models: list[str], log: Callable[[str], None],
                      paths: list[str] | None = None) -> None:
    """Crop every image of the manifest (or `paths`) once per crop setting the `models` train
    with, in Ray tasks over the cluster's CPUs, before any trial starts (`thyro.data.crop_cache`
    says why). Caches already current (a resumed job) are kept. The cache only saves time: if
    building it fails, the job goes on and each trial crops its images itself."""
    import time

    import ray

    from thyro.data import crop_cache
    from thyro.data.inputs import read_parquet
    from thyro.model.training import resolve_preset_for

    t0 = time.perf_counter()
    base = crop_cache.beside(manifest_uri)
    paths = read_parquet(manifest_uri)["path"].tolist() if paths is None else paths
    presets = {}
    for m in models:
        c = cfg.model_copy(deep=True)
        c.model.name = m
        p = resolve_preset_for(c)
        presets[crop_cache.cache_dir(base, p)] = p
    todo = {d: p for d, p in presets.items() if not crop_cache.is_current(d, paths)}
    if not todo:
        return
    # Two parts per CPU, so a slow part (large DICOMs) leaves the other CPUs work to do; at most
    # 256 images a part, so a task holds few encoded crops at once.
    size = min(256, max(8, -(-len(paths) // (2 * max(1, int(ray.cluster_resources().get("CPU", 1)))))))
    # A transient storage error is retried; crop errors never reach here (such an image has no row).
    task = ray.remote(num_cpus=1, max_retries=2, retry_exceptions=True)(_crop_part)
    refs = {d: [task.remote(d, k, paths[i:i + size], p.to_dict(), cfg.storage.endpoint_url, cfg.storage.region)
                for k, i in enumerate(range(0, len(paths), size))] for d, p in todo.items()}
    for d, parts in refs.items():
        try:
            n = sum(ray.get(parts))
        except Exception as e:  # noqa: BLE001 - a speed-up only: the trials crop for themselves
            log(f"crops: could not build the crop cache {d} ({type(e).__name__}: {str(e)[:300]}); "
                "each trial crops its images itself")
            continue
        crop_cache.mark_complete(d, len(parts), paths)
        log(f"crops: {n} of {len(paths)} images cropped once for preset {todo[d].name} -> {d}")
    log(f"crops: {time.perf_counter() - t0:.1f}s")
