"""Validation for hyperparameter search on the development set, which no test split holds.

Choosing hyperparameters on patients that later score a model inflates its
scores; so the search sees only the development patients (`split.dev_fraction`,
drawn by `make_splits` before any test split). `inner_folds` draws patient-grouped,
stratified inner train/validation splits of them; `inner_cv_epochs` trains one
model per inner split in lockstep and yields the mean validation AUC after every
epoch, so a scheduler (ASHA) can stop a poor configuration early.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
import torch

from thyro.config import Config
from thyro.data.splits import dev_indices, make_splits, split_indices
from thyro.model.engine import predict_proba, resolve_device, train_one_epoch
from thyro.model.losses import build_loss
from thyro.model.models import build_model
from thyro.stats.metrics import binary_metrics

NO_DEV_SET = ("the split table has no development patients: set split.dev_fraction > 0 (e.g. 0.2) so that the "
              "search runs on patients excluded from every test split")


def inner_folds(manifest: pd.DataFrame, splits: pd.DataFrame, n_inner: int, test_size: float,
                seed: int) -> tuple[pd.DataFrame, list[tuple[np.ndarray, np.ndarray]]]:
    """-> (the development set, [(inner train idx, inner val idx)] into it)."""
    idx = dev_indices(splits, manifest)
    if not len(idx):
        raise ValueError(NO_DEV_SET)
    portion = manifest.iloc[idx].reset_index(drop=True)
    try:
        inner = make_splits(portion, n_inner, test_size, seed)
    except ValueError as e:
        raise ValueError(f"cannot split the development set of {portion['patient_id'].nunique()} patients "
                         f"into inner folds: {e}; raise split.dev_fraction") from None
    return portion, [split_indices(inner, portion, k) for k in range(n_inner)]


def inner_cv_epochs(cfg: Config, portion: pd.DataFrame, folds: list[tuple[np.ndarray, np.ndarray]],
                    device: str = "auto", crops: dict | None = None) -> Iterator[dict]:
    """Train one model per inner fold, epoch by epoch; yield the folds' mean validation AUC each
    epoch. `crops`: path -> Cropped for the portion (`thyro.data.crop_cache`); else each fold
    crops its images itself."""
    from thyro.model.training import make_loaders, resolve_preset_for, seed_everything

    dev = resolve_device(device)
    seed_everything(cfg.train.seed)
    preset = resolve_preset_for(cfg)
    loss_fn = build_loss(cfg.train.loss, cfg.train.focal_gamma, cfg.train.focal_alpha)
    state = []
    for tr, va in folds:
        train_loader, val_loader = make_loaders(cfg, portion, tr, va, preset, crops)
        model = build_model(cfg.model.name, cfg.model.weights, offline=cfg.model.offline).to(dev)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        state.append((model, opt, train_loader, val_loader))
    for epoch in range(1, cfg.train.epochs + 1):
        aucs, losses = [], []
        for model, opt, train_loader, val_loader in state:
            tr = train_one_epoch(model, train_loader, loss_fn, opt, dev, cfg.train.precision, cfg.train.channels_last)
            y, p = predict_proba(model, val_loader, dev, cfg.train.precision, cfg.train.channels_last)
            aucs.append(binary_metrics(y, p)["auc"])
            losses.append(tr["loss"])
        yield {"epoch": epoch, "val_auc": float(np.mean(aucs)), "val_auc_sd": float(np.std(aucs)),
               "train_loss": float(np.mean(losses))}
