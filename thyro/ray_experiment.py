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

import io
import os
import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from thyro import checkpoint, storage
from thyro.config import Config, config_to_dict, config_to_yaml

EXPERIMENT_NAME = "experiment"


def run_dir(out: str, model: str, repeat: int) -> str:
    return storage.join(out, "runs", model, f"split{repeat:02d}")


def _read_parquet(uri: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def _write_parquet(uri: str, df: pd.DataFrame) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    storage.write_bytes(uri, buf.getvalue())


def prepare_inputs(cfg: Config, out: str, log: Callable[[str], None] = print) -> tuple[str, str]:
    """Write manifest.parquet and splits.parquet once; on resume, reuse (and check) them."""
    from thyro.splits import make_splits
    from thyro.training import resolve_manifest

    m_uri, s_uri = storage.join(out, "manifest.parquet"), storage.join(out, "splits.parquet")
    if storage.exists(m_uri) and storage.exists(s_uri):
        log(f"reusing the manifest and split table in {out}")
        return m_uri, s_uri
    manifest, source = resolve_manifest(cfg.data)
    manifest["path"] = [storage.absolute(p) for p in manifest["path"]]
    if "mask_path" in manifest:
        manifest["mask_path"] = [storage.absolute(p) if isinstance(p, str) else p for p in manifest["mask_path"]]
    manifest.attrs = {}
    splits = make_splits(manifest, cfg.split.n_repeats, cfg.split.test_size, cfg.split.seed)
    _write_parquet(m_uri, manifest)
    _write_parquet(s_uri, splits)
    storage.write_bytes(storage.join(out, "data_source.txt"), str(source).encode())
    return m_uri, s_uri


# --- inside Ray ------------------------------------------------------------------

def _train_worker(config: dict) -> None:
    """One Ray Train worker: train one model on one split (DDP when num_workers > 1)."""
    import ray.train
    import ray.train.torch
    import torch

    from thyro.training import train_run

    cfg = Config.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.ray.cpus_per_worker)))
    device = ray.train.torch.get_device()
    cfg.train.device = str(device)
    manifest = _read_parquet(config["manifest"])
    splits = _read_parquet(config["splits"])
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

        analyse_run(config["run_dir"], manifest, size=config["cam_size"], device=str(device))
    final = {k: res.metrics[k] for k in ("auc", "accuracy", "recall", "specificity", "precision", "f1")}
    ray.train.report({**tags, "done": True, **{f"test_{k}": v for k, v in final.items()}})


def _trial(config: dict) -> None:
    """A Tune trial: drive one TorchTrainer, or report a run that is already complete."""
    import ray.tune
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = Config.model_validate(config["cfg"])
    cfg.model.name = config["model"]
    cfg.split.repeat = int(config["repeat"])
    out = config["out"]
    rd = run_dir(out, cfg.model.name, cfg.split.repeat)
    if checkpoint.is_complete(rd):  # finished before an interruption: never redo it
        m = checkpoint.load_card(rd)["metrics"]
        ray.tune.report({"model": cfg.model.name, "repeat": cfg.split.repeat, "done": True, "resumed": True,
                         **{f"test_{k}": v for k, v in m.items()}})
        return
    r = cfg.ray
    resources = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.use_gpu else {})}
    fs, path = storage.pyarrow_filesystem(config["storage_path"])
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"cfg": config_to_dict(cfg), "run_dir": rd, "manifest": config["manifest"],
                           "splits": config["splits"], "source": config.get("source"),
                           "cam_analysis": cfg.experiment.cam_analysis and cfg.model.name == cfg.experiment.reference_model,
                           "cam_size": cfg.experiment.cam_size},
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=f"train-{cfg.model.name}-split{cfg.split.repeat:02d}-{ray.tune.get_context().get_trial_id()}",
                             storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=r.max_failures),
                             callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


# --- driver -------------------------------------------------------------------------

@dataclass
class ExperimentResult:
    out: str
    trials: pd.DataFrame
    summary: pd.DataFrame
    report: str
    seconds: float


def ray_env() -> dict[str, str]:
    """Ray settings every process of the job needs.

    A Train worker group that cannot start within the timeout (60 s by
    default) is retried with a new placement group while the old one is kept,
    which on a small machine locks all CPUs; waiting for the previous trial's
    resources instead is what a queue of trials needs.
    """
    key = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
    os.environ.setdefault(key, "1800")
    return {key: os.environ[key]}


def _init_ray(cfg: Config, env: dict) -> None:
    import ray

    if ray.is_initialized():
        return
    # Workers get the endpoint settings (never credentials; those come from
    # each node's environment) and must find thyro even under a working_dir.
    ray.init(address=cfg.ray.address or os.environ.get("RAY_ADDRESS"),
             runtime_env={"env_vars": env} if env else None,
             log_to_driver=True, configure_logging=True, logging_level="WARNING")


def run_experiment(cfg: Config, out: str, log: Callable[[str], None] = print) -> ExperimentResult:
    import ray.tune
    from ray.tune import FailureConfig, RunConfig, TuneConfig, Tuner

    from thyro.report import write_report
    from thyro.summary import collect_trials, summarize

    t0 = time.perf_counter()
    env = {**storage.configure(cfg.storage.endpoint_url, cfg.storage.region), **ray_env()}
    out = storage.absolute(out)
    m_uri, s_uri = prepare_inputs(cfg, out, log)
    storage.write_bytes(storage.join(out, "config.yaml"), config_to_yaml(cfg).encode())
    splits = cfg.experiment.splits if cfg.experiment.splits is not None else list(range(cfg.split.n_repeats))
    models = list(cfg.experiment.models)
    if cfg.experiment.reference_model not in models:
        raise ValueError(f"experiment.reference_model {cfg.experiment.reference_model} is not in experiment.models")
    storage_path = cfg.ray.storage_path or storage.join(out, "ray")
    fs, path = storage.pyarrow_filesystem(storage_path)
    _init_ray(cfg, env)

    trainable = ray.tune.with_resources(_trial, {"cpu": cfg.ray.trial_driver_cpus})
    exp_path = storage.join(storage_path, EXPERIMENT_NAME)
    if Tuner.can_restore(storage.join(path, EXPERIMENT_NAME), storage_filesystem=fs):
        log(f"resuming the experiment in {exp_path}: finished trials are not run again")
        tuner = Tuner.restore(storage.join(path, EXPERIMENT_NAME), trainable, resume_errored=True,
                              storage_filesystem=fs)
    else:
        tuner = Tuner(
            trainable,
            param_space={"model": ray.tune.grid_search(models), "repeat": ray.tune.grid_search(splits),
                         "cfg": config_to_dict(cfg), "out": out, "manifest": m_uri, "splits": s_uri,
                         "storage_path": storage_path},
            tune_config=TuneConfig(max_concurrent_trials=cfg.ray.max_concurrent_trials or None),
            run_config=RunConfig(name=EXPERIMENT_NAME, storage_path=path, storage_filesystem=fs,
                                 failure_config=FailureConfig(max_failures=cfg.ray.max_failures)),
        )
    log(f"experiment: {len(models)} models x {len(splits)} splits = {len(models) * len(splits)} trials -> {out}")
    tuner.fit()
    missing = [(m, s) for m in models for s in splits if not checkpoint.is_complete(run_dir(out, m, s))]
    if missing:
        raise RuntimeError(f"experiment incomplete: {len(missing)} trial(s) did not finish, e.g. "
                           f"{missing[0][0]} split {missing[0][1]}; run the same command again to resume")
    manifest = _read_parquet(m_uri)
    trials = collect_trials(out, models, splits, run_dir)
    summary = summarize(cfg, trials, out, run_dir, manifest)
    _write_parquet(storage.join(out, "trials.parquet"), trials.drop(columns=["predictions"], errors="ignore"))
    storage.write_bytes(storage.join(out, "summary.csv"), summary.to_csv(index=False).encode())
    report = write_report(cfg, out, trials, summary, manifest, run_dir)
    return ExperimentResult(out=out, trials=trials, summary=summary, report=report,
                            seconds=time.perf_counter() - t0)
