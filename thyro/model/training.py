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

from thyro.config import Config, DataConfig, config_to_yaml
from thyro.data import phantom
from thyro.data.dataset import UltrasoundDataset
from thyro.data.decode import decode
from thyro.data.manifest import load_manifest
from thyro.data.splits import leakage_report, make_splits, split_indices
from thyro.data.storage import join, read_bytes, write_bytes
from thyro.image.transforms import Preset, resolve_preset
from thyro.model import checkpoint
from thyro.model.engine import evaluate, fit, predict_margin, resolve_device
from thyro.model.losses import build_loss
from thyro.model.modelcard import build_card
from thyro.model.models import SPECS, build_model
from thyro.model.weights import pretrained_summary
from thyro.stats import metrics


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
    overrides = p.model_dump(exclude={"preset", "image_size"})
    preset = resolve_preset(p.preset, image_size=size, **overrides)
    if preset.panes == "each":
        raise ValueError("preprocess.panes: each is for scoring (a row per pane); training uses largest or all")
    return preset


@dataclass
class RunResult:
    out: str
    metrics: dict
    card: dict
    seconds: float


def eval_loader(cfg: Config, manifest: pd.DataFrame, idx, preset: Preset, crops: dict | None = None) -> DataLoader:
    kw = dict(num_workers=cfg.train.num_workers, persistent_workers=cfg.train.num_workers > 0)
    return DataLoader(UltrasoundDataset(manifest.iloc[idx], preset, train=False, crops=crops),
                      batch_size=cfg.eval.batch_size, shuffle=False, **kw)


def make_loaders(cfg: Config, manifest: pd.DataFrame, train_idx, test_idx, preset: Preset, crops: dict | None = None):
    tr = UltrasoundDataset(manifest.iloc[train_idx], preset, train=True, crops=crops)
    g = torch.Generator().manual_seed(cfg.train.seed)
    kw = dict(num_workers=cfg.train.num_workers, persistent_workers=cfg.train.num_workers > 0)
    return (DataLoader(tr, batch_size=cfg.train.batch_size, shuffle=True, generator=g, drop_last=len(tr) > cfg.train.batch_size, **kw),
            eval_loader(cfg, manifest, test_idx, preset, crops))


@dataclass
class OperatingPoint:
    """Chosen on the calibration slice of the training part, never on the test set."""
    threshold: float          # on the calibrated probability scale; what the score job labels with
    temperature: float        # log-odds are divided by it
    chosen_on: str            # "calibration" or "fixed" (no slice held back: eval.threshold, T = 1)
    n_calibration: int = 0

    def calibrated(self, margin: np.ndarray) -> np.ndarray:
        return metrics.calibrated_prob(margin, self.temperature)


def choose_operating_point(cfg: Config, y_cal: np.ndarray, margin_cal: np.ndarray) -> OperatingPoint:
    """Temperature scaling and the threshold reaching `target_sensitivity`, both fitted on
    held-back training patients (the test set must not choose its own operating point)."""
    if len(y_cal) == 0 or len(np.unique(y_cal)) < 2:
        return OperatingPoint(cfg.eval.threshold, 1.0, "fixed", int(len(y_cal)))
    t = metrics.fit_temperature(margin_cal, y_cal)
    thr = metrics.threshold_for_sensitivity(y_cal, metrics.calibrated_prob(margin_cal, t),
                                            cfg.eval.target_sensitivity)["threshold"]
    return OperatingPoint(float(thr), float(t), "calibration", int(len(y_cal)))


def summarize_test(cfg: Config, y: np.ndarray, margin: np.ndarray, groups: np.ndarray | None = None,
                   op: OperatingPoint | None = None) -> dict:
    """Test metrics: the study's at `eval.threshold` on the raw probability (for comparison with
    the study), patient-level bootstrap CIs, ECE before/after temperature scaling, and the
    sensitivity/specificity the operating point chosen on training data reaches on the test set."""
    from thyro.model.engine import sigmoid

    prob = sigmoid(margin)
    m = metrics.binary_metrics(y, prob, cfg.eval.threshold)
    m["ci95"] = metrics.bootstrap_ci(y, prob, cfg.eval.threshold, n_boot=cfg.eval.bootstrap,
                                     seed=cfg.split.seed, groups=groups) if cfg.eval.bootstrap else {}
    m["ci_resampling"] = "patients (stratified by patient label)" if groups is not None else "images"
    m["ece"] = metrics.expected_calibration_error(y, prob)
    op = op or OperatingPoint(cfg.eval.threshold, 1.0, "fixed")
    cal = op.calibrated(margin)
    m["ece_calibrated"] = metrics.expected_calibration_error(y, cal)
    at = metrics.sens_spec_at(y, cal, op.threshold)
    m["at_target_sensitivity"] = {**at, "target_sensitivity": cfg.eval.target_sensitivity,
                                  "temperature": op.temperature, "chosen_on": op.chosen_on,
                                  "n_calibration": op.n_calibration}
    return m


def _optimizer(cfg: Config, model: torch.nn.Module, steps_per_epoch: int):
    t = cfg.train
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    opt = cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    if t.schedule == "constant" and not t.warmup_epochs:
        return opt, None
    total, warm = max(1, t.epochs * steps_per_epoch), t.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if t.schedule == "cosine":
            return 0.5 * (1 + np.cos(np.pi * min(1.0, (step - warm) / max(1, total - warm))))
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_run(cfg: Config, out: str, manifest: pd.DataFrame | None = None, source: str | None = None,
              splits: pd.DataFrame | None = None, on_epoch: Callable[[int, dict], None] | None = None,
              log: Callable[[str], None] = print, model_id: str | None = None,
              prepare_model: Callable | None = None, prepare_loader: Callable | None = None,
              is_writer: bool = True, crops: dict | None = None, hashes: dict | None = None) -> RunResult:
    """Train `cfg.model` on split `cfg.split.repeat`, evaluate on its test part, save to `out`.

    `crops`: path -> Cropped made for this run's preset, `hashes`: path -> the leakage
    check's hashes (both `thyro.data.crop_cache`); images without them are read here.

    `prepare_model` / `prepare_loader` let a distributed runner wrap the model
    (DDP) and shard the training loader; only the `is_writer` process saves.
    """
    t0 = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if manifest is None:
        manifest, source = resolve_manifest(cfg.data)
    if splits is None:
        splits = make_splits(manifest, cfg.split.n_repeats, cfg.split.test_size, cfg.split.seed,
                             cfg.split.dev_fraction)
    train_idx, test_idx = split_indices(splits, manifest, cfg.split.repeat)
    leak = leakage_report(manifest, train_idx, test_idx, read_bytes, decode, known=hashes)
    if leak["shared_patients"]:
        raise RuntimeError(f"split leaks patients across train/test: {leak['shared_patients'][:5]}")
    if leak["identical_images"] or leak["near_duplicates"]:
        log(f"warning: {len(leak['identical_images'])} identical and {len(leak['near_duplicates'])} "
            "near-duplicate test images also appear in training (see leakage.json)")

    seed_everything(cfg.train.seed)
    preset = resolve_preset_for(cfg)
    device = resolve_device(cfg.train.device)
    from thyro.data.splits import calibration_split

    fit_idx, cal_idx = calibration_split(manifest, train_idx, cfg.eval.calibration_fraction, cfg.split.seed)
    train_loader, test_loader = make_loaders(cfg, manifest, fit_idx, test_idx, preset, crops)
    model = build_model(cfg.model.name, cfg.model.weights, offline=cfg.model.offline)
    if cfg.train.channels_last:  # before any DDP wrapping, which fixes parameter layouts
        model = model.to(memory_format=torch.channels_last)
    transform_input = getattr(model, "transform_input", None)
    if prepare_model is not None:
        model = prepare_model(model)
    if prepare_loader is not None:
        train_loader = prepare_loader(train_loader)
    loss_fn = build_loss(cfg.train.loss, cfg.train.focal_gamma, cfg.train.focal_alpha)
    opt, scheduler = _optimizer(cfg, model, len(train_loader))
    ema = None
    if cfg.train.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(getattr(model, "module", model), multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay),
                            use_buffers=True)
    log(f"{cfg.model.name}: {len(fit_idx)} train (+{len(cal_idx)} held back for calibration) / "
        f"{len(test_idx)} test images (split {cfg.split.repeat}), {preset.image_size}px {preset.name}, "
        f"{cfg.train.precision}, {device}")
    history = fit(model, train_loader, None, loss_fn, opt, cfg.train.epochs, device,
                  cfg.train.precision, cfg.train.channels_last, on_epoch=on_epoch, log=log,
                  scheduler=scheduler, ema=ema)
    final = ema.module if ema is not None else model
    op = OperatingPoint(cfg.eval.threshold, 1.0, "fixed")
    if len(cal_idx):
        y_cal, m_cal = predict_margin(final, eval_loader(cfg, manifest, cal_idx, preset, crops), device,
                                      cfg.train.precision, cfg.train.channels_last)
        op = choose_operating_point(cfg, y_cal, m_cal)
    ev = evaluate(final, test_loader, device, cfg.eval.threshold, cfg.train.precision, cfg.train.channels_last)
    test_rows = manifest.iloc[test_idx]
    m = summarize_test(cfg, ev["y"], ev["margin"], test_rows["patient_id"].to_numpy(), op)
    preds = pd.DataFrame({"image_id": test_rows["image_id"].to_numpy(), "patient_id": test_rows["patient_id"].to_numpy(),
                          "label": ev["y"], "prob_malignant": ev["prob"], "margin": ev["margin"],
                          "prob_calibrated": op.calibrated(ev["margin"])})
    card = build_card(
        model_name=cfg.model.name, preset=preset.to_dict(), threshold=op.threshold,
        split={"protocol": f"stratified {1 - cfg.split.test_size:.0%}/{cfg.split.test_size:.0%} train/test, "
                           "grouped by patient", "seed": cfg.split.seed, "repeat": cfg.split.repeat,
               "n_repeats": cfg.split.n_repeats, "n_train": int(len(fit_idx)), "n_test": int(len(test_idx)),
               "n_calibration": int(len(cal_idx)),
               "leakage": {k: (len(v) if isinstance(v, list) else v) for k, v in leak.items()}},
        metrics={k: m[k] for k in (*metrics.METRIC_NAMES, "ece", "ece_calibrated", "at_target_sensitivity")},
        data={"source": source, "n_images": int(len(manifest)), "n_malignant": int(manifest["label"].sum()),
              "n_patients": int(manifest["patient_id"].nunique()),
              # crops made once by the job for every training of this preset (thyro.data.crop_cache)
              "crops_from_cache": int(sum(p in crops for p in manifest["path"])) if crops else 0},
        training={"epochs": cfg.train.epochs, "optimizer": cfg.train.optimizer, "schedule": cfg.train.schedule,
                  "warmup_epochs": cfg.train.warmup_epochs, "ema_decay": cfg.train.ema_decay, "lr": cfg.train.lr,
                  "weight_decay": cfg.train.weight_decay, "batch_size": cfg.train.batch_size,
                  "loss": cfg.train.loss, "focal_gamma": cfg.train.focal_gamma,
                  "focal_alpha": cfg.train.focal_alpha, "precision": cfg.train.precision,
                  "init": cfg.model.weights or "random", "seed": cfg.train.seed,
                  **({"pretrained": pre} if (pre := pretrained_summary(cfg.model.weights)) else {})},
        cam_layer=cfg.cam.layer or SPECS[cfg.model.name].cam_layer, name=cfg.name,
        calibration={"temperature": op.temperature, "threshold": op.threshold, "chosen_on": op.chosen_on,
                     "target_sensitivity": cfg.eval.target_sensitivity, "n_calibration": op.n_calibration},
        transform_input=transform_input)
    card["model_id"] = model_id or f"{cfg.name}-{cfg.model.name}-split{cfg.split.repeat}-{card['created']}"
    if is_writer:
        write_bytes(join(out, "leakage.json"), json.dumps(leak, indent=2).encode())
        checkpoint.save_run(out, getattr(final, "module", final), card, config_to_yaml(cfg), m, preds, history)
    return RunResult(out=out, metrics=m, card=card, seconds=time.perf_counter() - t0)
