"""One model on one split: train, evaluate, save a run folder with its model card.

`train_run` is what `thyro train` calls, and what each Ray Train worker of
the experiment job calls with its own split and an `on_epoch` reporter.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from thyro import checkpoint, metrics, phantom
from thyro.config import Config, DataConfig, config_to_yaml
from thyro.dataset import UltrasoundDataset
from thyro.decode import decode
from thyro.engine import evaluate, fit, resolve_device
from thyro.losses import build_loss
from thyro.manifest import load_manifest
from thyro.modelcard import build_card
from thyro.models import SPECS, build_model
from thyro.storage import join, read_bytes, write_bytes
from thyro.splits import leakage_report, make_splits, split_indices
from thyro.transforms import Preset, resolve_preset


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def ensure_phantom(data: DataConfig) -> str:
    """Generate the phantom into `phantom_dir` unless the same one is already there."""
    out = Path(data.phantom_dir)
    params = {**data.phantom.model_dump(), "version": phantom.VERSION}
    stamp = out / "phantom.json"
    manifest = out / "manifest.csv"
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == params:
        return str(manifest)
    phantom.generate(out, **data.phantom.model_dump())
    stamp.write_text(json.dumps(params))
    return str(manifest)


def resolve_manifest(data: DataConfig) -> tuple[pd.DataFrame, str]:
    source = ensure_phantom(data) if data.source == "phantom" else data.source
    return load_manifest(source), source


def resolve_preset_for(cfg: Config) -> Preset:
    p = cfg.preprocess
    size = p.image_size if p.image_size is not None else SPECS[cfg.model.name].input_size
    if cfg.model.name == "inception_v3" and size < 299:
        # Its auxiliary classifier's 5x5 conv needs the 17x17 grid of a 299 px input.
        raise ValueError(f"inception_v3 needs preprocess.image_size >= 299, got {size}")
    return resolve_preset(p.preset, image_size=size, rotation_degrees=p.rotation_degrees, hflip_p=p.hflip_p)


@dataclass
class RunResult:
    out: str
    metrics: dict
    card: dict
    seconds: float


def make_loaders(cfg: Config, manifest: pd.DataFrame, train_idx, test_idx, preset: Preset):
    tr = UltrasoundDataset(manifest.iloc[train_idx], preset, train=True, frame=cfg.data.frame)
    te = UltrasoundDataset(manifest.iloc[test_idx], preset, train=False, frame=cfg.data.frame)
    g = torch.Generator().manual_seed(cfg.train.seed)
    kw = dict(num_workers=cfg.train.num_workers, persistent_workers=cfg.train.num_workers > 0)
    return (DataLoader(tr, batch_size=cfg.train.batch_size, shuffle=True, generator=g, drop_last=len(tr) > cfg.train.batch_size, **kw),
            DataLoader(te, batch_size=cfg.eval.batch_size, shuffle=False, **kw))


def summarize_test(cfg: Config, y: np.ndarray, prob: np.ndarray) -> dict:
    m = metrics.binary_metrics(y, prob, cfg.eval.threshold)
    m["ci95"] = metrics.bootstrap_ci(y, prob, cfg.eval.threshold, n_boot=cfg.eval.bootstrap,
                                     seed=cfg.split.seed) if cfg.eval.bootstrap else {}
    m["ece"] = metrics.expected_calibration_error(y, prob)
    m["at_target_sensitivity"] = metrics.threshold_for_sensitivity(y, prob, cfg.eval.target_sensitivity)
    return m


def train_run(cfg: Config, out: str, manifest: pd.DataFrame | None = None, source: str | None = None,
              splits: pd.DataFrame | None = None, on_epoch: Callable[[int, dict], None] | None = None,
              log: Callable[[str], None] = print, model_id: str | None = None,
              prepare_model: Callable | None = None, prepare_loader: Callable | None = None,
              is_writer: bool = True) -> RunResult:
    """Train `cfg.model` on split `cfg.split.repeat`, evaluate on its test part, save to `out`.

    `prepare_model` / `prepare_loader` let a distributed runner wrap the model
    (DDP) and shard the training loader; only the `is_writer` process saves.
    """
    t0 = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if manifest is None:
        manifest, source = resolve_manifest(cfg.data)
    if splits is None:
        splits = make_splits(manifest, cfg.split.n_repeats, cfg.split.test_size, cfg.split.seed)
    train_idx, test_idx = split_indices(splits, manifest, cfg.split.repeat)
    leak = leakage_report(manifest, train_idx, test_idx, read_bytes, decode)
    if leak["shared_patients"]:
        raise RuntimeError(f"split leaks patients across train/test: {leak['shared_patients'][:5]}")
    if leak["identical_images"] or leak["near_duplicates"]:
        log(f"warning: {len(leak['identical_images'])} identical and {len(leak['near_duplicates'])} "
            "near-duplicate test images also appear in training (see leakage.json)")

    seed_everything(cfg.train.seed)
    preset = resolve_preset_for(cfg)
    device = resolve_device(cfg.train.device)
    train_loader, test_loader = make_loaders(cfg, manifest, train_idx, test_idx, preset)
    model = build_model(cfg.model.name, cfg.model.weights)
    if cfg.train.channels_last:  # before any DDP wrapping, which fixes parameter layouts
        model = model.to(memory_format=torch.channels_last)
    if prepare_model is not None:
        model = prepare_model(model)
    if prepare_loader is not None:
        train_loader = prepare_loader(train_loader)
    loss_fn = build_loss(cfg.train.loss, cfg.train.focal_gamma, cfg.train.focal_alpha)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    log(f"{cfg.model.name}: {len(train_idx)} train / {len(test_idx)} test images "
        f"(split {cfg.split.repeat}), {preset.image_size}px, {cfg.train.precision}, {device}")
    history = fit(model, train_loader, None, loss_fn, opt, cfg.train.epochs, device,
                  cfg.train.precision, cfg.train.channels_last, on_epoch=on_epoch, log=log)
    ev = evaluate(model, test_loader, device, cfg.eval.threshold, cfg.train.precision, cfg.train.channels_last)
    m = summarize_test(cfg, ev["y"], ev["prob"])
    test_rows = manifest.iloc[test_idx]
    preds = pd.DataFrame({"image_id": test_rows["image_id"].to_numpy(), "patient_id": test_rows["patient_id"].to_numpy(),
                          "label": ev["y"], "prob_malignant": ev["prob"]})
    card = build_card(
        model_name=cfg.model.name, preset=preset.to_dict(), threshold=cfg.eval.threshold,
        split={"protocol": f"stratified {1 - cfg.split.test_size:.0%}/{cfg.split.test_size:.0%} train/test, "
                           "grouped by patient", "seed": cfg.split.seed, "repeat": cfg.split.repeat,
               "n_repeats": cfg.split.n_repeats, "n_train": int(len(train_idx)), "n_test": int(len(test_idx)),
               "leakage": {k: (len(v) if isinstance(v, list) else v) for k, v in leak.items()}},
        metrics={k: m[k] for k in (*metrics.METRIC_NAMES, "ece")},
        data={"source": source, "n_images": int(len(manifest)), "n_malignant": int(manifest["label"].sum()),
              "n_patients": int(manifest["patient_id"].nunique())},
        training={"epochs": cfg.train.epochs, "optimizer": "adam", "lr": cfg.train.lr,
                  "weight_decay": cfg.train.weight_decay, "batch_size": cfg.train.batch_size,
                  "loss": cfg.train.loss, "focal_gamma": cfg.train.focal_gamma,
                  "focal_alpha": cfg.train.focal_alpha, "precision": cfg.train.precision,
                  "init": cfg.model.weights or "random", "seed": cfg.train.seed},
        cam_layer=SPECS[cfg.model.name].cam_layer, name=cfg.name)
    card["model_id"] = model_id or f"{cfg.name}-{cfg.model.name}-split{cfg.split.repeat}-{card['created']}"
    if is_writer:
        write_bytes(join(out, "leakage.json"), json.dumps(leak, indent=2).encode())
        checkpoint.save_run(out, getattr(model, "module", model), card, config_to_yaml(cfg), m, preds, history)
    return RunResult(out=out, metrics=m, card=card, seconds=time.perf_counter() - t0)
