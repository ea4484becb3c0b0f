"""A preset's crop -> the model's tensor, shared by training, evaluation, Grad-CAM and scoring.

The preset itself (`thyro.image.preset`, re-exported here) is plain data saved in every model
card, so the pixels a model sees at scoring time are made exactly as at training time.
Training adds only the random augmentation.

The deterministic part (`thyro.image.preprocess`): crop to the scan field (or keep
the whole image), black outside the field, optional suppression of annotation
marks, then fit onto the square input by squashing (the study) or letterboxing.
This module turns such a crop into a normalised tensor, with or without
augmentation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from thyro.image.geometry import fit, place
from thyro.image.preset import IMAGENET_MEAN, IMAGENET_STD, PRESETS, Preset, resolve_preset  # noqa: F401


def normalize(u8: np.ndarray, p: Preset) -> torch.Tensor:
    """(S, S, 3) uint8 -> normalised float (3, S, S)."""
    t = torch.from_numpy(np.ascontiguousarray(u8)).permute(2, 0, 1).float().div_(255)
    mean = torch.tensor(p.mean).view(3, 1, 1)
    std = torch.tensor(p.std).view(3, 1, 1)
    return (t - mean) / std


def model_input(crop: np.ndarray, p: Preset) -> np.ndarray:
    """A crop (h, w, 3) uint8 -> the (S, S, 3) uint8 square the model sees."""
    return place(crop, p.image_size, fit(crop.shape[0], crop.shape[1], p.image_size, p.resize))


def eval_tensor(crop: np.ndarray, p: Preset) -> torch.Tensor:
    return normalize(model_input(crop, p), p)


def preprocess_batch(crops: list[np.ndarray], p: Preset) -> torch.Tensor:
    """Evaluation preprocessing of field crops -> (N, 3, S, S)."""
    return torch.stack([eval_tensor(c, p) for c in crops])


# --- training-time augmentation -------------------------------------------------------

def _random_crop(crop: np.ndarray, mask: np.ndarray, scale: float, g: torch.Generator | None):
    """A random window of the field crop keeping >= `scale` of its area (aspect within 3:4..4:3)."""
    h, w = mask.shape
    u = torch.rand(4, generator=g).tolist()
    area = h * w * (scale + (1 - scale) * u[0])
    r = float(np.exp(np.log(3 / 4) + (np.log(4 / 3) - np.log(3 / 4)) * u[1]))
    ch = int(min(h, max(8, round(np.sqrt(area / r)))))
    cw = int(min(w, max(8, round(np.sqrt(area * r)))))
    y0, x0 = int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1))
    return crop[y0:y0 + ch, x0:x0 + cw], mask[y0:y0 + ch, x0:x0 + cw]


def _intensity(x: torch.Tensor, strength: float, g: torch.Generator | None) -> torch.Tensor:
    """Gain, contrast and gamma jitter: what varies between scanners, presets and operators."""
    u = (torch.rand(3, generator=g) * 2 - 1) * strength
    x = x.clamp_min(1e-6) ** float(torch.exp(u[2]))
    return ((x - 0.5) * (1 + float(u[1])) + 0.5 + float(u[0]) / 2).clamp(0, 1)


def _speckle(x: torch.Tensor, sd: float, g: torch.Generator | None) -> torch.Tensor:
    """Multiplicative noise with a speckle-like grain (a few pixels), the same on every channel."""
    n = torch.randn((1, 1) + tuple(x.shape[-2:]), generator=g)
    n = F.avg_pool2d(n, 3, stride=1, padding=1, count_include_pad=False) * 3  # unit sd again after pooling
    return (x * (1 + sd * n[0])).clamp(0, 1)


class TrainTransform:
    """(crop uint8, field mask) -> augmented, normalised (3, S, S) tensor."""

    def __init__(self, p: Preset):
        self.p = p
        # torch's global generator: seeded by the run, and per DataLoader worker by torch itself
        self.g = None
        self.geometric = v2.Compose([v2.RandomHorizontalFlip(p.hflip_p), v2.RandomRotation(p.rotation_degrees)])

    def __call__(self, crop: np.ndarray, mask: np.ndarray | None = None) -> torch.Tensor:
        p = self.p
        if mask is None:
            mask = np.ones(crop.shape[:2], bool)
        robust = p.augment == "robust"
        if robust and p.crop_scale < 1:
            crop, mask = _random_crop(crop, mask, p.crop_scale, self.g)
        x = torch.from_numpy(np.ascontiguousarray(model_input(crop, p))).permute(2, 0, 1)
        x = x.float().div_(255)
        if robust:
            inner = fit(mask.shape[0], mask.shape[1], p.image_size, p.resize)
            inside = torch.from_numpy(place(mask.astype(np.uint8) * 255, p.image_size, inner) > 127)
            if p.intensity > 0:
                x = _intensity(x, p.intensity, self.g)
            if p.speckle > 0:
                x = _speckle(x, p.speckle, self.g)
            x = x * inside  # black outside the field and on the padding, whatever the jitter did
        x = self.geometric(x)
        mean = torch.tensor(p.mean).view(3, 1, 1)
        std = torch.tensor(p.std).view(3, 1, 1)
        return (x - mean) / std


def denormalize(x: torch.Tensor, p: Preset) -> torch.Tensor:
    """Undo normalisation for display: (N, 3, S, S) -> values in [0, 1]."""
    mean = torch.tensor(p.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(p.std, device=x.device).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)
