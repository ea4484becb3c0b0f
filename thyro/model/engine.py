"""Plain-PyTorch training and evaluation loops, device-agnostic.

In the style of torchvision's references/classification: `train_one_epoch`,
`evaluate`, and `fit` that strings them together. No Ray here: the Ray Train
worker calls `fit` with an `on_epoch` callback that reports to Ray.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from thyro.model.models import main_logits

AUX_WEIGHT = 0.4  # Inception v3 auxiliary classifier, as in Szegedy et al.


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device,
                    precision: str = "fp32", channels_last: bool = False,
                    scheduler=None, ema: nn.Module | None = None) -> dict:
    """One pass over `loader`; `scheduler` steps per batch, `ema` (an AveragedModel) follows the weights."""
    model.train()
    total, n, t0 = 0.0, 0, time.perf_counter()
    for x, y in loader:
        x, y = _to(x, device, channels_last), y.to(device)
        with autocast(device, precision):
            out = model(x)
        if hasattr(out, "aux_logits") and out.aux_logits is not None:
            loss = loss_fn(out.logits, y) + AUX_WEIGHT * loss_fn(out.aux_logits, y)
        else:
            loss = loss_fn(main_logits(out), y)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training loss is {loss.item()}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        total += loss.item() * len(y)
        n += len(y)
    dt = time.perf_counter() - t0
    return {"loss": total / max(n, 1), "images_per_s": n / dt if dt > 0 else float("nan"), "seconds": dt}


@torch.no_grad()
def predict_margin(model: nn.Module, loader: DataLoader, device: torch.device,
                   precision: str = "fp32", channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """-> (labels, log-odds of class 1, z1 - z0) over the loader, in float32 whatever the
    precision: the head runs in fp32 (models.Float32Linear), so bf16 creates no ties here."""
    model.eval()
    ys, ms = [], []
    for x, y in loader:
        with autocast(device, precision):
            logits = main_logits(model(_to(x, device, channels_last)))
        logits = logits.float()
        ms.append((logits[:, 1] - logits[:, 0]).cpu())
        ys.append(y)
    return torch.cat(ys).numpy(), torch.cat(ms).numpy()


def sigmoid(margin: np.ndarray) -> np.ndarray:
    """softmax of two logits = sigmoid of their difference, computed without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(margin, dtype=np.float64)))


def predict_proba(model: nn.Module, loader: DataLoader, device: torch.device,
                  precision: str = "fp32", channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """-> (labels, probability of class 1) over the loader."""
    y, m = predict_margin(model, loader, device, precision, channels_last)
    return y, sigmoid(m)


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, threshold: float = 0.5,
             precision: str = "fp32", channels_last: bool = False) -> dict:
    from thyro.stats.metrics import binary_metrics

    y, m = predict_margin(model, loader, device, precision, channels_last)
    p = sigmoid(m)
    return {"metrics": binary_metrics(y, p, threshold), "y": y, "prob": p, "margin": m}


def fit(model: nn.Module, train_loader: DataLoader, test_loader: DataLoader | None,
        loss_fn: nn.Module, optimizer: torch.optim.Optimizer, epochs: int, device: torch.device,
        precision: str = "fp32", channels_last: bool = False,
        on_epoch: Callable[[int, dict], None] | None = None, log: Callable[[str], None] = print,
        scheduler=None, ema: nn.Module | None = None) -> list[dict]:
    """Train for `epochs`; evaluate after each epoch when a test loader is given."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    history = []
    for epoch in range(epochs):
        tr = train_one_epoch(model, train_loader, loss_fn, optimizer, device, precision, channels_last,
                             scheduler, ema)
        rec = {"epoch": epoch + 1, "train_loss": tr["loss"], "train_images_per_s": tr["images_per_s"]}
        if test_loader is not None:
            ev = evaluate(model, test_loader, device, precision=precision, channels_last=channels_last)
            rec.update({f"test_{k}": v for k, v in ev["metrics"].items() if k != "confusion"})
        history.append(rec)
        log(f"epoch {epoch + 1}/{epochs} loss {tr['loss']:.4f} "
            f"({tr['images_per_s']:.0f} img/s)" +
            (f" test auc {rec['test_auc']:.3f}" if "test_auc" in rec else ""))
        if on_epoch is not None:
            on_epoch(epoch + 1, rec)
    return history
