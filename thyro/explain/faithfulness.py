"""Does a map point at what the model uses? Deletion and insertion curves (RISE).

Petsiuk, Das & Saenko (2018), "RISE: Randomized Input Sampling for Explanation
of Black-box Models": remove the input's pixels in the map's order, most
important first, and follow the probability of the explained class (deletion:
a faithful map makes it fall fast, a small area under the curve); or start from
a featureless input and put pixels back in that order (insertion: a faithful
map makes it rise fast, a large area). The same curves in a random pixel order
are the yardstick: AUC-deletion / random < 1 and AUC-insertion / random > 1
mean the map knows something about the model.

"Removed" means replaced by the image's own mean grey, for both curves: a
black fill (RISE's deletion) would paint an anechoic, cyst-like hole, itself a
strong ultrasound cue, and a blur (RISE's insertion) keeps the local
echogenicity, the very evidence a nodule's darkness is.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


def featureless(x: torch.Tensor) -> torch.Tensor:
    """The stand-in for removed pixels: each image's mean, per channel (no texture, no echogenicity)."""
    return x.mean(dim=(2, 3), keepdim=True).expand_as(x)


def _ranks(order_maps: torch.Tensor) -> torch.Tensor:
    """(N, S*S) scores -> the rank of each pixel, 0 = most important (ties: lower index first)."""
    order = torch.argsort(-order_maps, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    return ranks


def curves(score: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, maps: torch.Tensor,
           steps: int = 16, seed: int = 0, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Deletion and insertion curves of `maps` and of a random order, per image.

    score: (B, 3, S, S) -> (B,) probability of the class each map explains (same row order).
    x: (N, 3, S, S) model inputs; maps: (N, h, w) (resized to S x S here).
    Returns per-image AUCs (trapezoid over the removed fraction 0..1): auc_deletion,
    auc_insertion, auc_deletion_random, auc_insertion_random, and the curves themselves.
    """
    n, _, s, _ = x.shape
    m = F.interpolate(maps[:, None].float(), size=(s, s), mode="bilinear", align_corners=False)[:, 0]
    g = torch.Generator().manual_seed(seed)
    ranks = {"map": _ranks(m.flatten(1)), "random": _ranks(torch.rand(n, s * s, generator=g))}
    base = featureless(x)
    fractions = np.linspace(0, 1, steps + 1)
    out: dict[str, np.ndarray] = {}
    for name, r in ranks.items():
        dele, ins = np.zeros((n, steps + 1)), np.zeros((n, steps + 1))
        for k, f in enumerate(fractions):
            keep_out = (r < round(f * s * s)).view(n, 1, s, s)  # the top-f pixels
            deleted = torch.where(keep_out, base, x)
            inserted = torch.where(keep_out, x, base)
            for i in range(0, n, batch_size):
                sl = slice(i, i + batch_size)
                dele[sl, k] = score(deleted[sl]).detach().float().cpu().numpy()
                ins[sl, k] = score(inserted[sl]).detach().float().cpu().numpy()
        suffix = "" if name == "map" else "_random"
        out[f"deletion{suffix}"], out[f"insertion{suffix}"] = dele, ins
        out[f"auc_deletion{suffix}"] = np.trapezoid(dele, fractions, axis=1)
        out[f"auc_insertion{suffix}"] = np.trapezoid(ins, fractions, axis=1)
    return out


def summarize(c: dict[str, np.ndarray], keep: np.ndarray | None = None) -> dict[str, float]:
    """Mean AUCs over images (optionally a subset) and their ratios to the random order."""
    sel = np.ones(len(c["auc_deletion"]), bool) if keep is None else np.asarray(keep, bool)
    mean = {k: float(np.mean(c[k][sel])) if sel.any() else float("nan")
            for k in ("auc_deletion", "auc_insertion", "auc_deletion_random", "auc_insertion_random")}
    mean["deletion_ratio"] = mean["auc_deletion"] / mean["auc_deletion_random"]
    mean["insertion_ratio"] = mean["auc_insertion"] / mean["auc_insertion_random"]
    mean["n_images"] = int(sel.sum())
    return mean
