"""Preprocessing presets shared by training, evaluation, Grad-CAM and scoring.

A `Preset` is plain data: it is saved inside every run's model card and read
back by the predictor, so the pixels a model sees at scoring time are made
exactly as at training time. Training adds only the random augmentation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    name: str
    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Training-only augmentation (the study: flip and rotation).
    hflip_p: float = 0.5
    rotation_degrees: float = 15.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preset":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


PRESETS: dict[str, Preset] = {
    # The study: 224 px, flips and rotations, ImageNet normalisation.
    "study": Preset("study"),
    # Inception v3 is defined at 299 px.
    "study-299": Preset("study-299", image_size=299),
}


def resolve_preset(name: str, image_size: int | None = None, rotation_degrees: float | None = None,
                   hflip_p: float | None = None) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preprocessing preset {name!r}; known: {sorted(PRESETS)}")
    p = PRESETS[name]
    changes = {k: v for k, v in dict(image_size=image_size, rotation_degrees=rotation_degrees,
                                      hflip_p=hflip_p).items() if v is not None}
    return replace(p, **changes)


def train_transform(p: Preset) -> v2.Compose:
    """uint8 HxWx3 array -> normalised float CxHxW tensor, with augmentation."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize((p.image_size, p.image_size), antialias=True),
        v2.RandomHorizontalFlip(p.hflip_p),
        v2.RandomRotation(p.rotation_degrees),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(p.mean, p.std),
    ])


def eval_transform(p: Preset) -> v2.Compose:
    return v2.Compose([
        v2.ToImage(),
        v2.Resize((p.image_size, p.image_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(p.mean, p.std),
    ])


def preprocess_batch(images: list[np.ndarray], p: Preset) -> torch.Tensor:
    """Evaluation preprocessing for a list of canonical images -> (N, 3, S, S).

    Same operations as `eval_transform`, so one code path serves the dataset
    and the batched predictor.
    """
    t = eval_transform(p)
    return torch.stack([t(img) for img in images])


def denormalize(x: torch.Tensor, p: Preset) -> torch.Tensor:
    """Undo normalisation for display: (N, 3, S, S) -> values in [0, 1]."""
    mean = torch.tensor(p.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(p.std, device=x.device).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)


def resize_map(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, H, W) maps."""
    return F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
