"""Resuming in an output folder only with the config that folder's results were made with.

`thyro experiment`, `tune`, `pretrain` and `score` pick up where a previous run in the
same output folder stopped: Tune restores its grid (with the config it started with),
pretraining restores its checkpoint, the manifest and split table are reused, scored
rows are skipped. Run again with a changed config, such a job would mix results made
under two configs while the folder's `config.yaml` names only one. Each job first calls
`prepare_output`, before it writes anything or imports Ray: `check_resume` compares the
folder's saved config with the new one and refuses a change that can alter results,
then a new folder gets its `config.yaml`.

Keys that only say where and how the work runs (`OPERATIONAL`) may change on a resume.
So may every section a job never reads (`JOB_SECTIONS`). Everything else counts, also
where a change would only be cosmetic: an unknown is treated as a change of results.
`config.yaml` is written once, by the run that starts the folder, and a resume leaves it
as it is: its results-relevant keys then hold for everything in the folder, and its
operational keys are those the run started with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import yaml
from pydantic import ValidationError

from thyro.config import Config, _format_errors, config_to_dict, config_to_yaml, yaml_load
from thyro.data import storage

CONFIG_FILE = "config.yaml"
# The score job wrote its config only into its manifest, at its end, before config.yaml.
SCORE_MANIFEST = "run_manifest.json"

# Keys that change at most where, when and with how many threads the same computation runs;
# each is safe to change on a resume for the reason given.
OPERATIONAL: dict[str, str] = {
    "ray.address": "which Ray cluster runs the job",
    "ray.max_concurrent_trials": "how many trials run at once, not what a trial computes",
    "ray.cpus_per_worker": "CPUs reserved per worker and its torch threads: float rounding only",
    "ray.gpus_per_worker": "the share of a GPU a worker reserves (ray.use_gpu decides whether it has one)",
    "ray.trial_driver_cpus": "CPU reserved by a Tune trial that only drives its trainer",
    "ray.max_failures": "retries of a crashed trial or worker group; a retry resumes like a rerun",
    "ray.elastic_threads": "torch threads at epoch boundaries: float rounding only",
    "ray.storage_path": "where Ray keeps its state; a new place restarts Ray's bookkeeping, not finished runs",
    "storage.endpoint_url": "how s3:// URIs are reached, not which objects they name",
    "storage.region": "how s3:// URIs are reached, not which objects they name",
    "train.threads": "torch intra-op threads: float rounding only",
    "train.channels_last": "the tensors' memory layout: float rounding only",
    "train.crop_cache": "whether the job crops each image once or each trial does: the same pixels "
                        "(tests/test_crop_cache.py)",
    "pretrain.channels_last": "the tensors' memory layout: float rounding only",
    "pretrain.checkpoint_every_steps": "how often the state is saved, not the steps taken",
    "eval.batch_size": "evaluation batches of a model in eval mode: each image is computed alone",
    "score.batch_size": "predictor batches of a model in eval mode: each image is computed alone",
    "score.chunk_size": "inputs handed to Ray Data at a time (the order of discovery is kept)",
    "score.chunk_mib": "inline bytes handed to Ray Data at a time (the order of discovery is kept)",
    "score.rows_per_file": "how output rows are split into Parquet files",
    "score.stages": "fused or split stages compute the same rows (tests/test_score_finish.py)",
    "score.actors": "the predictor pool's size",
    "score.min_actors": "the predictor pool's size",
    "score.tasks_in_flight_per_actor": "queueing in front of each predictor",
    "score.block_batches": "items per decode task",
    "score.cpus_per_actor": "CPUs a predictor reserves",
    "score.cpus_per_task": "CPUs a read / decode task reserves",
    "score.task_memory_mib": "memory a read / decode task reserves",
    "score.threads": "torch threads per predictor: float rounding only",
}
# Not operational, though they look it: ray.num_workers (DDP world size: the global batch and,
# for pretraining, the steps per epoch), ray.use_gpu, train.device, score.device,
# score.gpus_per_actor, score.decode_on (another device runs other kernels, TF32 convolutions on
# CUDA by default, and nvjpeg decodes JPEGs to other pixels than PIL), train.num_workers
# (DataLoader workers draw the augmentations from other random streams).

# The sections (or single keys) each job reads; a change anywhere else cannot reach its results.
# `tune` writes the whole config (with the best point) as best.yaml, so for it every key counts.
# Pretraining reads its inputs as the score job does (score.* below); the score job takes the
# preset, threshold and model from the saved run it scores, not from the config.
JOB_SECTIONS: dict[str, tuple[str, ...] | None] = {
    "experiment": ("data", "preprocess", "model", "train", "split", "eval", "cam", "experiment", "ray",
                   "storage", "name"),
    "tune": None,
    "pretrain": ("pretrain", "ray", "storage", "name", "score.frames", "score.frame_step", "score.max_frames",
                 "score.skip_extensions", "score.hash_salt", "score.chunk_size", "score.chunk_mib",
                 "score.cpus_per_task", "score.task_memory_mib"),
    "score": ("score", "cam.target", "cam.layer", "cam.region_threshold", "storage", "ray.address"),
}
# Jobs whose driver copies the ImageNet files into <out>/weights/ (thyro.model.weights.resolve_weights).
COPIES_WEIGHTS = ("experiment", "tune")
OUT_FLAG = {"experiment": "--out", "tune": "--out", "pretrain": "--out", "score": "--output"}


class ResumeConfigError(ValueError):
    """An output folder holds results made with a config the new run contradicts."""


@dataclass(frozen=True)
class ConfigChange:
    key: str  # dotted, e.g. "train.lr"
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


_MISSING = "<absent>"


def config_changes(saved: dict, new: dict) -> list[ConfigChange]:
    """Every dotted key whose value differs between two config dicts, in `new`'s order."""
    a, b = flatten(saved), flatten(new)
    keys = list(b) + [k for k in a if k not in b]
    return [ConfigChange(k, a.get(k, _MISSING), b.get(k, _MISSING)) for k in keys
            if a.get(k, _MISSING) != b.get(k, _MISSING)]


def read_by(key: str, job: str) -> bool:
    """Whether `job` reads dotted `key` at all (it, or its section, is listed for the job)."""
    if job not in JOB_SECTIONS:
        raise ValueError(f"unknown job {job!r}; known: {sorted(JOB_SECTIONS)}")
    read = JOB_SECTIONS[job]
    return read is None or any(key == r or key.startswith(r + ".") for r in read)


def changes_results(key: str, job: str) -> bool:
    """Whether a change of dotted `key` can change what `job` computes or writes."""
    return read_by(key, job) and key not in OPERATIONAL


def _parse(text: str, uri: str, key: str | None = None) -> dict:
    try:
        data = json.loads(text) if key is not None else yaml_load(text)
    except (ValueError, yaml.YAMLError) as e:  # JSON or YAML syntax
        raise ResumeConfigError(f"{uri}: cannot be read ({e}); without it the folder's config is unknown: "
                                "choose a new output folder") from None
    if key is not None:
        data = data.get(key) if isinstance(data, dict) else None
    if not isinstance(data, dict):
        raise ResumeConfigError(f"{uri}: holds no config mapping; without it the folder's config is unknown: "
                                "choose a new output folder")
    try:
        # validated, so that defaults and the config's own migrations (score.overlays: true) apply
        return config_to_dict(Config.model_validate(data))
    except ValidationError as e:
        head, *lines = _format_errors(e, uri).split("\n")  # one line: the CLI prints it after "error:"
        raise ResumeConfigError(f"{head} {'; '.join(ln.strip() for ln in lines)}; the folder's config is "
                                "unknown to this version: choose a new output folder") from None


def saved_config(out: str, job: str) -> tuple[dict, str] | None:
    """The config saved in output folder `out` (local or URI) and where it was read; None when the
    folder holds none. The score job's older outputs have it only in run_manifest.json."""
    uri = storage.join(out, CONFIG_FILE)
    if storage.exists(uri):
        return _parse(storage.read_bytes(uri).decode(), uri), uri
    manifest = storage.join(out, SCORE_MANIFEST)
    if job == "score" and storage.exists(manifest):
        return _parse(storage.read_bytes(manifest).decode(), manifest, key="config"), manifest
    return None


def run_config(cfg: Config, out: str, job: str) -> Config:
    """The config `job` runs with in output folder `out`: where its driver copies torchvision's
    files (`model.weights: imagenet`, thyro.distributed.common.job_setup), it names that folder."""
    if job in COPIES_WEIGHTS and cfg.model.weights == "imagenet":
        from thyro.model.weights import imagenet_folder  # loads torch: not on the score driver's path

        cfg = cfg.model_copy(deep=True)
        cfg.model.weights = imagenet_folder(out)
    return cfg


def check_resume(cfg: Config, out: str, job: str, log: Callable[[str], None] = print) -> bool:
    """Raise `ResumeConfigError` when the config saved in output folder `out` differs from `cfg`
    in a key that can change `job`'s results; log the operational keys that differ. Returns whether
    `out` holds a config (a resume)."""
    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)  # `out` may be s3://, and Ray is not up
    out = storage.absolute(out)
    found = saved_config(out, job)
    if found is None:
        return False
    saved, uri = found
    changes = config_changes(saved, config_to_dict(run_config(cfg, out, job)))
    relevant = [c for c in changes if changes_results(c.key, job)]
    if relevant:
        original = f"--config {uri}" if uri.endswith(CONFIG_FILE) else f"the \"config\" of {uri} as --config"
        raise ResumeConfigError(
            f"{out} holds results made with another config ({uri}); resuming there would mix them with "
            f"results of this one, which differs in: {'; '.join(map(str, relevant))}. To resume, run again with "
            f"the original settings ({original}); to run this config, choose a new {OUT_FLAG[job]}")
    operational = [c for c in changes if c.key in OPERATIONAL and read_by(c.key, job)]
    if operational:
        log(f"resuming in {out} with operational settings that differ from {uri} (they do not change "
            f"results; the saved config keeps those the run started with): {'; '.join(map(str, operational))}")
    return True


def prepare_output(cfg: Config, out: str, job: str, log: Callable[[str], None] = print) -> bool:
    """What `job` does first, before it writes anything else or starts Ray: `check_resume`, then,
    in a folder that has none, save `<out>/config.yaml` (once: a resume leaves it as it is).
    Returns whether `out` held a saved config (a resume)."""
    resumed = check_resume(cfg, out, job, log)
    uri = storage.join(storage.absolute(out), CONFIG_FILE)
    if not storage.exists(uri):
        storage.write_bytes(uri, config_to_yaml(run_config(cfg, out, job)).encode())
    return resumed
