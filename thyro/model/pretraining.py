"""Plain-PyTorch self-supervised pretraining loop, optimiser and the saved backbone.

In the style of torchvision's `train_one_epoch`: `pretrain_one_epoch` takes any
iterable of (view1, view2) batches, so a DataLoader here and a Ray Data shard
in a Ray Train worker (thyro/distributed/pretrain.py) drive the same code.

Output of a pretraining run, a folder (local or fsspec URI):

    backbone.pt      the classifier trunk's state_dict (no head), loadable by
                     `build_model(name, weights=<folder or file>)`
    metadata.json    the model card: method, backbone, epochs, steps, how many
                     distinct images (by content sha256) it saw, views, loss,
                     versions, intended use
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
import time
from typing import Callable, Iterable

import torch
import torch.nn as nn

from thyro.data import storage
from thyro.model.engine import _to, autocast
from thyro.model.modelcard import git_sha, package_versions

BACKBONE_FILE = "backbone.pt"
CARD_FILE = "metadata.json"
CARD_SCHEMA = "thyro.pretrain/1"
INTENDED_USE = ("Research use only: a self-supervised image encoder to initialise thyro classifiers, which must "
                "then be trained and evaluated on labelled data. Not a medical device; it makes no prediction, "
                "and nothing it encodes is for diagnosis, triage or any clinical decision.")


def pretrain_one_epoch(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       optimizer: torch.optim.Optimizer, device: torch.device | str, precision: str = "fp32",
                       channels_last: bool = False, scheduler=None,
                       on_step: Callable[[int, dict], None] | None = None) -> dict:
    """One pass over `batches` of (view1, view2); `scheduler` steps per batch.

    `on_step(step, record)` is called after every optimiser step (step counts
    within this epoch, from 1) with the step's loss and images, e.g. for
    checkpoints every N steps. -> mean loss (per image), images, images/s, steps, and the
    mean collapse monitor `z_std` (thyro.model.ssl.collapse_std: 0 means collapsed).
    """
    device = torch.device(device)
    model.train()
    total, n, steps, z_std, t0 = 0.0, 0, 0, 0.0, time.perf_counter()
    inner = getattr(model, "module", model)
    for v1, v2 in batches:
        v1, v2 = _to(v1, device, channels_last), _to(v2, device, channels_last)
        with autocast(device, precision):
            loss = model(v1, v2)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"pretraining loss is {value}; lower pretrain.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += value * len(v1)
        n += len(v1)
        steps += 1
        std = getattr(inner, "last_z_std", float("nan"))
        z_std += std
        if on_step is not None:
            on_step(steps, {"loss": value, "images": len(v1), "lr": optimizer.param_groups[0]["lr"], "z_std": std})
    dt = time.perf_counter() - t0
    return {"loss": total / max(n, 1) if n else float("nan"), "images": n,
            "images_per_s": n / dt if dt > 0 else float("nan"), "steps": steps, "seconds": dt,
            "z_std": z_std / steps if steps else float("nan")}


def make_optimizer(model: nn.Module, cfg, steps_per_epoch: int = 1):
    """-> (optimizer, per-step scheduler) from a PretrainConfig: SGD (momentum 0.9) or
    AdamW, linear warm-up over `warmup_epochs`, then cosine decay to 0 over `epochs`.

    The predictor keeps a constant rate, as in SimSiam (the paper: it helps, and the
    predictor then tracks the trunk's latest features)."""
    m = getattr(model, "module", model)
    pred = list(m.predictor.parameters()) if hasattr(m, "predictor") else []
    pred_ids = {id(p) for p in pred}
    rest = [p for p in m.parameters() if id(p) not in pred_ids]
    groups = [{"params": rest, "fix_lr": False}] + ([{"params": pred, "fix_lr": True}] if pred else [])
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"pretrain.optimizer {cfg.optimizer!r}: expected sgd or adamw")
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = getattr(cfg, "warmup_epochs", 0) * steps_per_epoch

    def cosine(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    def fixed(step: int) -> float:
        return (step + 1) / warm if step < warm else 1.0

    lambdas = [fixed if g["fix_lr"] else cosine for g in groups]
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambdas)


def content_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pretrain_card(*, method: str, backbone: str, epochs: int, steps: int, distinct_images: int,
                  image_size: int, preset: dict, views: dict, final_loss: float, history: list | None = None,
                  optimizer: dict | None = None, throughput: dict | None = None, sources: list | None = None,
                  data_counts: dict | None = None, name: str = "thyro") -> dict:
    """The model card of a pretrained backbone. The data is described by counts, never by
    paths (which can carry names): `distinct_images`, the inputs the caller found distinct by
    content sha256 (it holds the hashes; a large scan keeps only their prefixes), and
    `data_counts` (images, inputs, error rows, ...); `sources` are the input URIs the user
    gave (folders, prefixes), not file paths."""
    return {
        "schema": CARD_SCHEMA,
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "intended_use": INTENDED_USE,
        "method": method,
        "backbone": backbone,
        "weights_file": BACKBONE_FILE,
        "data": {"distinct_images": distinct_images, "counted_by": "content sha256", "sources": list(sources or []),
                 **(data_counts or {})},
        "training": {"epochs": epochs, "steps": steps, "final_loss": final_loss, **(optimizer or {}),
                     **({"throughput": throughput} if throughput else {})},
        "inputs": {"image_size": image_size, "preprocessing": preset, "views": views},
        "history": history or [],
        "versions": package_versions(("thyro", "torch", "torchvision", "numpy", "ray")),
        "git_sha": git_sha(),
    }


def save_backbone(folder: str, model: nn.Module, card: dict) -> str:
    """Write `backbone.pt` (the classifier trunk, no head) then `metadata.json` (the card,
    last: its presence marks a complete output) to `folder` (local or URI); -> the folder."""
    from thyro.model.ssl import backbone_state_dict

    m = getattr(model, "module", model)
    card = {**card, "backbone": getattr(m, "backbone_name", card.get("backbone")), "weights_file": BACKBONE_FILE}
    card.setdefault("intended_use", INTENDED_USE)
    card.setdefault("schema", CARD_SCHEMA)
    buf = io.BytesIO()
    torch.save(backbone_state_dict(m), buf)
    storage.write_bytes(storage.join(folder, BACKBONE_FILE), buf.getvalue())
    storage.write_bytes(storage.join(folder, CARD_FILE), json.dumps(card, indent=2).encode())
    return folder
