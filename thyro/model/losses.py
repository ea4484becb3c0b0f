"""Focal loss (Lin et al., 2017, "Focal Loss for Dense Object Detection").

FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t), on softmax probabilities of a
multi-class head. With gamma=0 and alpha=None it is exactly cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class FocalLoss(nn.Module):
    def __init__(self, gamma: float = 2.0, alpha: float | None = None):
        """`alpha` weighs the positive class (index 1, malignant), 1 - alpha the other."""
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        logp_t = logp.gather(1, target[:, None]).squeeze(1)
        # 1 - p_t as -expm1(log p_t): exact where p_t rounds to 1, and clamped above 0
        # because d/dx x^gamma is infinite at x = 0 for gamma < 1 (NaN gradients otherwise).
        one_minus = (-torch.expm1(logp_t)).clamp_min(torch.finfo(logp_t.dtype).tiny)
        loss = -(one_minus ** self.gamma) * logp_t
        if self.alpha is not None:
            alpha_t = torch.where(target == 1, self.alpha, 1 - self.alpha)
            loss = alpha_t * loss
        return loss.mean()


def build_loss(kind: str, gamma: float = 2.0, alpha: float | None = None) -> nn.Module:
    if kind == "focal":
        return FocalLoss(gamma, alpha)
    if kind == "cross_entropy":
        return nn.CrossEntropyLoss()
    raise ValueError(f"unknown loss {kind!r}")
