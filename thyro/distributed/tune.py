"""Hyperparameter search on Ray Tune: ASHA over nested, patient-grouped inner splits.

Each trial drives a Ray Train `TorchTrainer` whose worker trains one model per
inner split of the development set (`split.dev_fraction`) in lockstep
(`thyro.stats.validation`) and reports the mean validation AUC every epoch; ASHA stops
weak configurations early. The development patients are in no test split of an
experiment with the same split config, so the search never sees a patient that
later scores the chosen configuration. The best configuration is written as a
YAML config that `thyro experiment` accepts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import yaml

from thyro.config import Config, config_to_dict, load_config
from thyro.data import storage
from thyro.distributed.common import build_crop_caches, job_setup, make_trainer, trial_setup, worker_setup
from thyro.resume_guard import prepare_output

if TYPE_CHECKING:
    import pandas as pd

METRIC = "val_auc"


def apply_params(cfg_dict: dict, params: dict) -> dict:
    """Set dotted keys ("train.lr") of a config dict."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg_dict.items()}
    for dotted, value in params.items():
        section, key = dotted.split(".")
        out[section] = {**out[section], key: value}
    return out


def search_space(cfg: Config) -> dict:
    from ray import tune

    t = cfg.tune
    return {
        "train.lr": tune.loguniform(*t.lr),
        "train.weight_decay": tune.loguniform(*t.weight_decay),
        "train.focal_gamma": tune.uniform(*t.focal_gamma),
        "train.focal_alpha": tune.choice(t.focal_alpha),
        "train.batch_size": tune.choice(t.batch_size),
        "preprocess.rotation_degrees": tune.uniform(*t.rotation_degrees),
        "preprocess.hflip_p": tune.choice(t.hflip_p),
        "preprocess.image_size": tune.choice(t.image_size),
    }


def _search_worker(config: dict) -> None:
    import ray.train

    from thyro.data import crop_cache
    from thyro.data.inputs import read_parquet
    from thyro.model.training import resolve_preset_for
    from thyro.stats.validation import inner_cv_epochs, inner_folds

    cfg = Config.model_validate(config["cfg"])
    device = worker_setup(cfg)
    manifest, splits = read_parquet(config["manifest"]), read_parquet(config["splits"])
    t = cfg.tune
    portion, folds = inner_folds(manifest, splits, t.inner_splits, t.inner_test_size, t.seed)
    crops = crop_cache.load(crop_cache.cache_dir(crop_cache.beside(config["manifest"]), resolve_preset_for(cfg)),
                            portion["path"]) if cfg.train.crop_cache else None
    for rec in inner_cv_epochs(cfg, portion, folds, device, crops=crops):
        ray.train.report(rec)


def _search_trial(config: dict) -> None:
    import ray.tune

    cfg_dict = apply_params(config["cfg"], config["params"])
    cfg = Config.model_validate(cfg_dict)  # a sampled point must be a valid config
    trial_setup(cfg)
    trainer = make_trainer(_search_worker, {**config, "cfg": cfg_dict}, cfg,
                           f"search-{ray.tune.get_context().get_trial_id()}", config["storage_path"])
    trainer.fit()


@dataclass
class SearchResult:
    best_config: str
    best_params: dict
    best_val_auc: float
    trials: pd.DataFrame
    seconds: float


def run_tune(cfg: Config, out: str, log: Callable[[str], None] = print) -> SearchResult:
    if cfg.split.dev_fraction == 0:
        raise ValueError("thyro tune searches only on a development set of patients that no test split holds, "
                         "and split.dev_fraction is 0: set it (e.g. --set split.dev_fraction=0.2)")
    # The manifest and split table in `out` are reused, and tune_results.csv / best.yaml there
    # stand until this run ends: both must come from the config the folder names.
    prepare_output(cfg, out, "tune", log)
    import pandas as pd
    import ray.tune
    from ray.tune import RunConfig, TuneConfig, Tuner
    from ray.tune.schedulers import ASHAScheduler

    from thyro.data.inputs import read_parquet
    from thyro.stats.validation import inner_folds

    t0 = time.perf_counter()
    job = job_setup(cfg, out, log, models=[cfg.model.name])  # the search trains one architecture
    out = job.out
    t = cfg.tune
    # Fails here, before any trial, if the development set cannot be split.
    dev, _ = inner_folds(read_parquet(job.manifest), read_parquet(job.splits), t.inner_splits,
                         t.inner_test_size, t.seed)
    if cfg.train.crop_cache:  # every trial trains on these images, in every inner fold
        build_crop_caches(cfg, job.manifest, [cfg.model.name], log, paths=dev["path"].tolist())
    searched = (f"development set of {dev['patient_id'].nunique()} patients, excluded from every test split "
                "of an experiment run with this config")
    scheduler = ASHAScheduler(time_attr="epoch", metric=METRIC, mode="max", max_t=cfg.train.epochs,
                              grace_period=min(cfg.tune.grace_period, cfg.train.epochs),
                              reduction_factor=cfg.tune.reduction_factor)
    tuner = Tuner(
        ray.tune.with_resources(_search_trial, {"cpu": cfg.ray.trial_driver_cpus}),
        param_space={"params": search_space(cfg), "cfg": config_to_dict(cfg), "manifest": job.manifest,
                     "splits": job.splits, "storage_path": job.storage_path},
        tune_config=TuneConfig(num_samples=cfg.tune.num_samples, scheduler=scheduler,
                               max_concurrent_trials=cfg.ray.max_concurrent_trials or None),
        run_config=RunConfig(name="tune", storage_path=job.fs_path, storage_filesystem=job.fs),
    )
    log(f"tune: {cfg.tune.num_samples} configurations, ASHA, inner splits of the {searched} -> {out}")
    grid = tuner.fit()
    done = [r for r in grid if r.metrics and METRIC in r.metrics]
    if not done:
        raise RuntimeError("no tuning trial reported a validation AUC; see the Ray logs above")
    # Trials that ran every epoch rank first: the experiment trains that long.
    done.sort(key=lambda r: (r.metrics.get("epoch", 0), r.metrics[METRIC]), reverse=True)
    trials = pd.DataFrame([{**r.config["params"], "epochs_run": r.metrics.get("epoch"), METRIC: r.metrics[METRIC],
                            "val_auc_sd": r.metrics.get("val_auc_sd"), "searched_on": searched} for r in done])
    storage.write_bytes(storage.join(out, "tune_results.csv"), trials.to_csv(index=False).encode())
    best = trials.iloc[0]
    params = dict(done[0].config["params"])
    best_cfg = apply_params(config_to_dict(cfg), params)
    best_cfg["name"] = f"{cfg.name}-tuned"
    text = ("# Best configuration found by `thyro tune` (mean inner-split validation AUC "
            f"{best[METRIC]:.4f}); use with `thyro experiment --config`.\n"
            f"# Searched on the {searched}; keep the split section as it is.\n"
            + yaml.safe_dump(best_cfg, sort_keys=False))
    uri = storage.join(out, "best.yaml")
    storage.write_bytes(uri, text.encode())
    if not storage.is_remote(uri):
        load_config(uri)  # what we wrote must load as a valid config
    return SearchResult(best_config=uri, best_params=params, best_val_auc=float(best[METRIC]),
                        trials=trials, seconds=time.perf_counter() - t0)
