"""The study's protocol on Ray: a Tune grid over model x split, each trial a Ray Train run.

Ray touchpoints, around plain thyro code:
- `run_experiment` (driver): builds the manifest and split table once, writes
  them to the output as data, then runs a `ray.tune.Tuner` grid;
- `_trial` (a Tune function trial, ~0 CPU): skips a (model, split) whose run
  folder is already complete, else drives a `TorchTrainer`;
- `_train_worker` (each Ray Train worker): `thyro.model.training.train_run` with a
  reporter that forwards every epoch to Ray.
Everything after the trials (statistics, report) reads the run folders, which
are the source of truth, so a resumed experiment ends with the same summary.

Failures: a trial whose node is lost or whose worker raises is retried by Tune
(ray.max_failures, on any node that has room, one that joins later included);
the Train run inside does not retry as well. A trial that still fails is
recorded in trials.parquet, summary.csv and the report with its error, the
others are summarised, and `run_experiment` raises `ExperimentIncomplete`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from thyro.config import Config, config_to_dict
from thyro.data import storage
from thyro.distributed.common import (build_crop_caches, elastic_threads, job_setup, make_trainer, node_cpus_free,
                                      own_threads, trial_setup, worker_setup)
from thyro.model import checkpoint
from thyro.resume_guard import prepare_output

if TYPE_CHECKING:
    import pandas as pd

EXPERIMENT_NAME = "experiment"
# "model/split" (e.g. "resnet18/1"), read by the driver: that trial's Train worker
# raises on every attempt. Fault tests use it to check that one failing trial is
# retried, recorded, and does not take the experiment down.
FAIL_TRIAL_ENV = "THYRO_INJECT_TRIAL_FAILURE"


# Relative cost of a training step per image at 128 px, ResNet18 = 1 (batch 32, bf16,
# channels_last, one thread, on this project's 2-core CPU: 1.4 / 1.7 / 18.6 s a step,
# Inception v3 22.1 s at 299 px). Only the order of trials depends on it.
TRAIN_COST = {"resnet18": 1.0, "alexnet": 1.2, "inception_v3": 2.9, "vgg16": 13.5}


def run_dir(out: str, model: str, repeat: int) -> str:
    return storage.join(out, "runs", model, f"split{repeat:02d}")


def trial_cost(model: str, image_size: int | None) -> float:
    """Relative cost of one trial: the model's step cost times its input's pixels."""
    from thyro.model.models import SPECS

    size = image_size if image_size is not None else SPECS[model].input_size
    return TRAIN_COST[model] * (size / 128) ** 2


def trial_order(models: list[str], splits: list[int], image_size: int | None) -> list[dict]:
    """The grid's trials, longest first (Graham's LPT rule): the trials that end the run
    alone are then the short ones. Equal costs keep the config's model and split order."""
    pairs = [(m, s) for m in models for s in splits]
    pairs.sort(key=lambda p: -trial_cost(p[0], image_size))  # stable
    return [{"model": m, "repeat": s} for m, s in pairs]


# --- inside Ray ------------------------------------------------------------------

def _train_worker(config: dict) -> None:
    """One Ray Train worker: train one model on one split (DDP when num_workers > 1)."""
    import ray.train
    import ray.train.torch

    from thyro.data import crop_cache
    from thyro.data.inputs import read_parquet
    from thyro.model.training import resolve_preset_for, train_run
    from thyro.stats.metrics import METRIC_NAMES

    cfg = Config.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = cfg.train.device = worker_setup(cfg)
    manifest = read_parquet(config["manifest"])
    splits = read_parquet(config["splits"])
    cache = crop_cache.cache_dir(crop_cache.beside(config["manifest"]), resolve_preset_for(cfg))
    crops, hashes = (crop_cache.load_with_hashes(cache, manifest["path"])
                     if config.get("crop_cache") else (None, None))
    tags = {"model": cfg.model.name, "repeat": cfg.split.repeat}
    if config.get("fail_trial") == f"{cfg.model.name}/{cfg.split.repeat}":
        raise RuntimeError(f"injected failure ({FAIL_TRIAL_ENV}={config['fail_trial']})")

    elastic = cfg.ray.elastic_threads and world == 1 and device == "cpu"
    own = cfg.train.threads or own_threads(cfg.ray.cpus_per_worker)

    def on_epoch(epoch: int, rec: dict) -> None:
        ray.train.report({**tags, **rec})
        if elastic and epoch < cfg.train.epochs:
            import torch

            free = node_cpus_free()
            if free is not None:
                torch.set_num_threads(elastic_threads(own, free[0], free[1], cap=cfg.train.threads))

    distributed = {}
    if world > 1:
        distributed = {"prepare_model": ray.train.torch.prepare_model,
                       "prepare_loader": ray.train.torch.prepare_data_loader}
    res = train_run(cfg, config["run_dir"], manifest, config.get("source"), splits, on_epoch=on_epoch,
                    log=(print if rank == 0 else (lambda s: None)), is_writer=rank == 0,
                    model_id=f"{cfg.name}/{cfg.model.name}/split{cfg.split.repeat:02d}", crops=crops, hashes=hashes,
                    **distributed)
    if rank == 0 and config.get("cam_analysis"):
        from thyro.explain.cam_analysis import analyse_run

        # every CAM setting of the config, not the defaults (target, region threshold, layer, faithfulness)
        analyse_run(config["run_dir"], manifest, cam=cfg.cam, size=config["cam_size"], device=device,
                    precision=cfg.train.precision, crops=crops)
    final = {k: res.metrics[k] for k in METRIC_NAMES}
    ray.train.report({**tags, "done": True, **{f"test_{k}": v for k, v in final.items()}})


def _trial(config: dict, fail_trial: str | None = None, crop_cache: bool = False) -> None:
    """A Tune trial: drive one TorchTrainer, or report a run that is already complete.
    `fail_trial` and `crop_cache` (train.crop_cache) come with the trainable, not the config:
    a resumed experiment gets the driver's current values, not the ones saved in Tune's state."""
    import ray.tune

    cfg = Config.model_validate(config["cfg"])
    which = config.get("trial", config)  # an experiment started before the ordered grid has model/repeat on top
    cfg.model.name = which["model"]
    cfg.split.repeat = int(which["repeat"])
    trial_setup(cfg)
    out = config["out"]
    rd = run_dir(out, cfg.model.name, cfg.split.repeat)
    if checkpoint.is_complete(rd):  # finished before an interruption: never redo it
        m = checkpoint.load_card(rd)["metrics"]
        ray.tune.report({"model": cfg.model.name, "repeat": cfg.split.repeat, "done": True, "resumed": True,
                         **{f"test_{k}": v for k, v in m.items()}})
        return
    trainer = make_trainer(
        _train_worker,
        {"cfg": config_to_dict(cfg), "run_dir": rd, "manifest": config["manifest"], "splits": config["splits"],
         "source": config.get("source"), "cam_size": cfg.experiment.cam_size,
         "cam_analysis": cfg.experiment.cam_analysis, "fail_trial": fail_trial, "crop_cache": crop_cache},
        cfg, f"train-{cfg.model.name}-split{cfg.split.repeat:02d}-{ray.tune.get_context().get_trial_id()}",
        config["storage_path"], max_failures=0)  # Tune retries the whole trial, on any node
    trainer.fit()


# --- driver -------------------------------------------------------------------------

@dataclass
class ExperimentResult:
    out: str
    trials: pd.DataFrame    # complete trials (trials.parquet also lists the failed ones)
    summary: pd.DataFrame
    report: str
    seconds: float
    failed: pd.DataFrame | None = None  # model, split, error: trials that did not complete


class ExperimentIncomplete(RuntimeError):
    """Some trials failed after their retries; the others are summarised in `result`."""

    def __init__(self, message: str, result: ExperimentResult | None = None):
        super().__init__(message)
        self.result = result


def _error_text(err: BaseException | None) -> str:
    """The root error of a failed trial, one line (Ray wraps it in a traceback per layer)."""
    if err is None:
        return "did not finish (no error recorded)"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in reversed(lines):  # the innermost "SomeError: message" line
        head = ln.split(":", 1)[0]
        if ":" in ln and head.replace(".", "").isidentifier() and head[:1].isupper():
            return ln[:500]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"[:500]


def _trial_errors(grid) -> dict[tuple[str, int], str]:
    errors = {}
    for r in grid:
        if r.error is not None and r.config:
            which = r.config.get("trial", r.config)
            errors[(which["model"], int(which["repeat"]))] = _error_text(r.error)
    return errors


def run_experiment(cfg: Config, out: str, log: Callable[[str], None] = print) -> ExperimentResult:
    # Before Ray and before any write: Tune would restore the grid with the config it started with.
    prepare_output(cfg, out, "experiment", log)
    import pandas as pd
    import ray.tune
    from ray.tune import FailureConfig, RunConfig, TuneConfig, Tuner

    from thyro.data.inputs import read_parquet, write_parquet
    from thyro.stats.report import write_report
    from thyro.stats.summary import collect_trials, mark_failed, summarize

    t0 = time.perf_counter()
    job = job_setup(cfg, out, log)
    out, fs = job.out, job.fs
    state = storage.join(job.fs_path, EXPERIMENT_NAME)
    splits = cfg.experiment.splits if cfg.experiment.splits is not None else list(range(cfg.split.n_repeats))
    models = list(cfg.experiment.models)
    if cfg.experiment.reference_model not in models:
        raise ValueError(f"experiment.reference_model {cfg.experiment.reference_model} is not in experiment.models")
    if cfg.train.crop_cache:
        build_crop_caches(cfg, job.manifest, models, log)
    trainable = ray.tune.with_resources(ray.tune.with_parameters(_trial, fail_trial=os.environ.get(FAIL_TRIAL_ENV),
                                                                 crop_cache=cfg.train.crop_cache),
                                        {"cpu": cfg.ray.trial_driver_cpus})
    if Tuner.can_restore(state, storage_filesystem=fs):
        log(f"resuming the experiment in {storage.join(job.storage_path, EXPERIMENT_NAME)}: "
            "finished trials are not run again")
        tuner = Tuner.restore(state, trainable, resume_errored=True, storage_filesystem=fs)
    else:
        tuner = Tuner(
            trainable,
            # One grid variable: Tune runs a grid in the order its values are listed, and a
            # product of two would run model-fastest whatever the costs.
            param_space={"trial": ray.tune.grid_search(trial_order(models, splits, cfg.preprocess.image_size)),
                         "cfg": config_to_dict(cfg), "out": out, "manifest": job.manifest, "splits": job.splits,
                         "storage_path": job.storage_path},
            # Not reuse_actors: with it this grid stalled once its first trials ended (Ray 2.60, cause not found).
            tune_config=TuneConfig(max_concurrent_trials=cfg.ray.max_concurrent_trials or None),
            run_config=RunConfig(name=EXPERIMENT_NAME, storage_path=job.fs_path, storage_filesystem=fs,
                                 failure_config=FailureConfig(max_failures=cfg.ray.max_failures)),
        )
    log(f"experiment: {len(models)} models x {len(splits)} splits = {len(models) * len(splits)} trials -> {out}")
    t_grid = time.perf_counter()
    errors = _trial_errors(tuner.fit())
    log(f"trials: the grid took {time.perf_counter() - t_grid:.0f}s; statistics and report")
    missing = [(m, s) for m in models for s in splits if not checkpoint.is_complete(run_dir(out, m, s))]
    if len(missing) == len(models) * len(splits):
        raise ExperimentIncomplete(f"experiment incomplete: none of the {len(missing)} trials finished, e.g. "
                                   f"{missing[0][0]} split {missing[0][1]}: {errors.get(missing[0], 'no error')}; "
                                   "run the same command again to resume")
    failed = pd.DataFrame([{"model": m, "split": s, "error": errors.get((m, s), _error_text(None))}
                           for m, s in missing], columns=["model", "split", "error"])
    manifest = read_parquet(job.manifest)
    trials = collect_trials(out, models, splits, run_dir, skip=set(missing))
    summary = mark_failed(summarize(cfg, trials, out, run_dir), failed, models)
    listed = pd.concat([trials.assign(status="complete", error=None), failed.assign(status="failed")],
                       ignore_index=True) if len(failed) else trials.assign(status="complete", error=None)
    write_parquet(storage.join(out, "trials.parquet"), listed)
    storage.write_bytes(storage.join(out, "summary.csv"), summary.to_csv(index=False).encode())
    report = write_report(cfg, out, trials, summary, manifest, failed=failed)
    res = ExperimentResult(out=out, trials=trials, summary=summary, report=report,
                           seconds=time.perf_counter() - t0, failed=failed)
    if len(failed):
        first = failed.iloc[0]
        raise ExperimentIncomplete(
            f"experiment incomplete: {len(failed)} of {len(models) * len(splits)} trial(s) failed after "
            f"{cfg.ray.max_failures} retries, e.g. {first.model} split {first.split}: {first.error}; the others "
            f"are summarised in {storage.join(out, 'summary.csv')} and the report marks the failed ones; "
            "run the same command again to retry them", res)
    return res
