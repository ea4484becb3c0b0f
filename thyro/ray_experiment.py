"""The study's protocol on Ray: a Tune grid over model x split, each trial a Ray Train run.

Ray touchpoints, around plain thyro code:
- `run_experiment` (driver): builds the manifest and split table once, writes
  them to the output as data, then runs a `ray.tune.Tuner` grid;
- `_trial` (a Tune function trial, ~0 CPU): skips a (model, split) whose run
  folder is already complete, else drives a `TorchTrainer`;
- `_train_worker` (each Ray Train worker): `thyro.training.train_run` with a
  reporter that forwards every epoch to Ray.
Everything after the trials (statistics, report) reads the run folders, which
are the source of truth, so a resumed experiment ends with the same summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from thyro import checkpoint, storage
from thyro.config import Config, config_to_dict, config_to_yaml
from thyro.inputs import read_parquet, write_parquet
from thyro.metrics import METRIC_NAMES
from thyro.ray_common import job_setup, make_trainer, trial_setup, worker_setup

EXPERIMENT_NAME = "experiment"


def run_dir(out: str, model: str, repeat: int) -> str:
    return storage.join(out, "runs", model, f"split{repeat:02d}")


# --- inside Ray ------------------------------------------------------------------

def _train_worker(config: dict) -> None:
    """One Ray Train worker: train one model on one split (DDP when num_workers > 1)."""
    import ray.train
    import ray.train.torch

    from thyro.training import train_run

    cfg = Config.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = cfg.train.device = worker_setup(cfg)
    manifest = read_parquet(config["manifest"])
    splits = read_parquet(config["splits"])
    tags = {"model": cfg.model.name, "repeat": cfg.split.repeat}

    def on_epoch(epoch: int, rec: dict) -> None:
        ray.train.report({**tags, **rec})

    distributed = {}
    if world > 1:
        distributed = {"prepare_model": ray.train.torch.prepare_model,
                       "prepare_loader": ray.train.torch.prepare_data_loader}
    res = train_run(cfg, config["run_dir"], manifest, config.get("source"), splits, on_epoch=on_epoch,
                    log=(print if rank == 0 else (lambda s: None)), is_writer=rank == 0,
                    model_id=f"{cfg.name}/{cfg.model.name}/split{cfg.split.repeat:02d}", **distributed)
    if rank == 0 and config.get("cam_analysis"):
        from thyro.cam_analysis import analyse_run

        # every CAM setting of the config, not the defaults (target, region threshold, layer, faithfulness)
        analyse_run(config["run_dir"], manifest, cam=cfg.cam, size=config["cam_size"], device=device,
                    precision=cfg.train.precision)
    final = {k: res.metrics[k] for k in METRIC_NAMES}
    ray.train.report({**tags, "done": True, **{f"test_{k}": v for k, v in final.items()}})


def _trial(config: dict) -> None:
    """A Tune trial: drive one TorchTrainer, or report a run that is already complete."""
    import ray.tune

    cfg = Config.model_validate(config["cfg"])
    cfg.model.name = config["model"]
    cfg.split.repeat = int(config["repeat"])
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
         "cam_analysis": cfg.experiment.cam_analysis},
        cfg, f"train-{cfg.model.name}-split{cfg.split.repeat:02d}-{ray.tune.get_context().get_trial_id()}",
        config["storage_path"])
    trainer.fit()


# --- driver -------------------------------------------------------------------------

@dataclass
class ExperimentResult:
    out: str
    trials: pd.DataFrame
    summary: pd.DataFrame
    report: str
    seconds: float


def run_experiment(cfg: Config, out: str, log: Callable[[str], None] = print) -> ExperimentResult:
    import ray.tune
    from ray.tune import FailureConfig, RunConfig, TuneConfig, Tuner

    from thyro.report import write_report
    from thyro.summary import collect_trials, summarize

    t0 = time.perf_counter()
    job = job_setup(cfg, out, log)
    out, fs = job.out, job.fs
    state = storage.join(job.fs_path, EXPERIMENT_NAME)
    storage.write_bytes(storage.join(out, "config.yaml"), config_to_yaml(cfg).encode())
    splits = cfg.experiment.splits if cfg.experiment.splits is not None else list(range(cfg.split.n_repeats))
    models = list(cfg.experiment.models)
    if cfg.experiment.reference_model not in models:
        raise ValueError(f"experiment.reference_model {cfg.experiment.reference_model} is not in experiment.models")
    trainable = ray.tune.with_resources(_trial, {"cpu": cfg.ray.trial_driver_cpus})
    if Tuner.can_restore(state, storage_filesystem=fs):
        log(f"resuming the experiment in {storage.join(job.storage_path, EXPERIMENT_NAME)}: "
            "finished trials are not run again")
        tuner = Tuner.restore(state, trainable, resume_errored=True, storage_filesystem=fs)
    else:
        tuner = Tuner(
            trainable,
            param_space={"model": ray.tune.grid_search(models), "repeat": ray.tune.grid_search(splits),
                         "cfg": config_to_dict(cfg), "out": out, "manifest": job.manifest, "splits": job.splits,
                         "storage_path": job.storage_path},
            tune_config=TuneConfig(max_concurrent_trials=cfg.ray.max_concurrent_trials or None),
            run_config=RunConfig(name=EXPERIMENT_NAME, storage_path=job.fs_path, storage_filesystem=fs,
                                 failure_config=FailureConfig(max_failures=cfg.ray.max_failures)),
        )
    log(f"experiment: {len(models)} models x {len(splits)} splits = {len(models) * len(splits)} trials -> {out}")
    tuner.fit()
    missing = [(m, s) for m in models for s in splits if not checkpoint.is_complete(run_dir(out, m, s))]
    if missing:
        raise RuntimeError(f"experiment incomplete: {len(missing)} trial(s) did not finish, e.g. "
                           f"{missing[0][0]} split {missing[0][1]}; run the same command again to resume")
    manifest = read_parquet(job.manifest)
    trials = collect_trials(out, models, splits, run_dir)
    summary = summarize(cfg, trials, out, run_dir)
    write_parquet(storage.join(out, "trials.parquet"), trials)
    storage.write_bytes(storage.join(out, "summary.csv"), summary.to_csv(index=False).encode())
    report = write_report(cfg, out, trials, summary, manifest)
    return ExperimentResult(out=out, trials=trials, summary=summary, report=report,
                            seconds=time.perf_counter() - t0)
