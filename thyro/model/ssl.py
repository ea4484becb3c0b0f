"""Self-supervised pretraining method: SimSiam (Chen & He, CVPR 2021).

Why SimSiam. A hospital archive is large but a thyro run often has one CPU or
one GPU, so batches are small (32-64) and, in development, so is the data
(hundreds of images). Contrastive methods (SimCLR, MoCo) need many negatives:
large batches or a queue whose keys go stale on small data. BYOL and DINO
need a momentum (EMA) teacher, a second copy of the network and a schedule
for its decay. SimSiam has neither: two augmented views of one image go
through one encoder (trunk + projector), a small predictor maps one view's
projection onto the other's, and a stop-gradient on the target is what
prevents collapse. The paper shows it working at batch 64-256 and on
CIFAR-sized data; it is also the cheapest of the four per step.

`SimSiam.backbone_state_dict()` is the classifier trunk alone, under the
names `thyro.model.models.build_model(name, weights=...)` loads (only the 2-class
head is missing, which the classifier initialises itself).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from thyro.model.models import SPECS, build_model

# Inception v3 returns (logits, aux) in training mode and needs 299 px inputs:
# too costly for pretraining here, so it is refused rather than half-supported.
SUPPORTED = ("resnet18", "alexnet", "vgg16")


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -mean cos(p, sg(z)), in float32 whatever the autocast."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """The symmetric loss: each view's prediction against the other's projection (stop-gradient)."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def collapse_std(z: torch.Tensor) -> float:
    """SimSiam's collapse monitor: the per-dimension std over the batch of the l2-normalised
    projections, averaged. Collapsed (every image one output): 0; healthy: near 1/sqrt(dim)."""
    return float(F.normalize(z.detach().float(), dim=1).std(dim=0).mean())


def _projector(in_dim: int, dim: int) -> nn.Sequential:
    # The paper's 3-layer MLP with BN on every layer (the output BN has no affine).
    return nn.Sequential(
        nn.Linear(in_dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False))


def _predictor(dim: int, hidden: int) -> nn.Sequential:
    # Bottleneck MLP; no BN on its output (the paper: training is unstable with it).
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim))


class SimSiam(nn.Module):
    """trunk (a thyro classifier without its head) -> projector -> predictor."""

    def __init__(self, backbone: str = "resnet18", proj_dim: int = 2048, pred_dim: int = 512):
        super().__init__()
        if backbone not in SUPPORTED:
            raise ValueError(f"self-supervised pretraining supports {list(SUPPORTED)}, not {backbone!r}")
        self.backbone_name = backbone
        spec = SPECS[backbone]
        trunk = build_model(backbone)
        feat_dim = spec.head(trunk).in_features
        spec.set_head(trunk, nn.Identity())  # the trunk now ends at the head's input features
        self.trunk = trunk
        self.projector = _projector(feat_dim, proj_dim)
        self.predictor = _predictor(proj_dim, pred_dim)
        self.feat_dim = feat_dim

    @classmethod
    def from_config(cls, cfg) -> "SimSiam":
        """The model a PretrainConfig describes."""
        if cfg.method != "simsiam":
            raise ValueError(f"pretrain.method {cfg.method!r}: only simsiam is implemented")
        return cls(cfg.backbone, cfg.proj_dim, cfg.pred_dim)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (z, p): projection and prediction of a batch of views."""
        z = self.projector(self.trunk(x))
        return z, self.predictor(z)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        # One pass over both views: BN sees the batch of 2N, and the trunk runs once.
        z, p = self.embed(torch.cat([v1, v2]))
        z1, z2 = z.chunk(2)
        p1, p2 = p.chunk(2)
        with torch.no_grad():
            self.last_z_std = collapse_std(z1)
        return simsiam_loss(p1, p2, z1, z2)

    def backbone_state_dict(self) -> dict:
        """The trunk's tensors, on CPU, under the classifier's names (no head)."""
        return {k: v.detach().cpu().clone() for k, v in self.trunk.state_dict().items()}


def backbone_state_dict(model: nn.Module) -> dict:
    """`model.backbone_state_dict()`, also through a DDP wrapper."""
    return getattr(model, "module", model).backbone_state_dict()
