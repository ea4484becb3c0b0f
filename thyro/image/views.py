"""Two augmented views of one ultrasound image, for self-supervised pretraining.

The input is what `thyro.image.preprocess` makes of a screen (the crop to the scan
field, black outside it) and, optionally, its field mask. Each view:

1. greyscale: the channels are averaged (B-mode is grey; a coloured caliper
   must not become a cue), and nothing outside the field survives;
2. a random window of the field's box keeping >= `crop_scale` of its area
   (aspect 3:4..4:3; windows that are mostly outside a fan are redrawn), fitted
   onto the S x S square as the preset fits crops (squash or letterbox);
3. gain / contrast / gamma jitter and speckle-like multiplicative noise
   (`thyro.image.transforms`, the `robust` preset's), Gaussian blur with
   probability `blur_p`, then black again outside the field;
4. horizontal flip and a small rotation (no vertical flip: depth has a
   direction in ultrasound), copied onto three equal channels and normalised
   with the preset's mean / std.

No colour jitter: the images are grey, and the views stay grey.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from thyro.image.geometry import fit, place
from thyro.image.transforms import Preset, _intensity, _random_crop, _speckle, model_input


@dataclass(frozen=True)
class ViewStrengths:
    crop_scale: float = 0.3       # smallest fraction of the field's box a view keeps
    hflip_p: float = 0.5
    rotation_degrees: float = 10.0
    intensity: float = 0.4        # gain +-i/2, contrast 1+-i, gamma e^+-i
    speckle: float = 0.2          # sd of the multiplicative, grain-sized noise
    blur_p: float = 0.5           # probability of a Gaussian blur
    blur_sigma: float = 1.5       # its largest sigma, in pixels of the S x S view

    def to_dict(self) -> dict:
        return asdict(self)


class TwoViews:
    """(crop uint8 (h, w) or (h, w, 3), optional field mask) -> two float tensors (3, S, S)."""

    MAX_REDRAWS = 10
    MIN_FIELD_SHARE = 0.5

    def __init__(self, size: int, preset: dict | Preset, crop_scale: float = 0.3, hflip_p: float = 0.5,
                 rotation_degrees: float = 10.0, intensity: float = 0.4, speckle: float = 0.2,
                 blur_p: float = 0.5, blur_sigma: float = 1.5):
        p = preset if isinstance(preset, Preset) else Preset.from_dict(preset)
        self.preset = replace(p, image_size=int(size))
        self.size = int(size)
        self.strengths = ViewStrengths(crop_scale, hflip_p, rotation_degrees, intensity, speckle, blur_p,
                                       blur_sigma)
        if not 0 < crop_scale <= 1:
            raise ValueError(f"crop_scale {crop_scale}: expected a fraction in (0, 1]")
        self.mean = torch.tensor(self.preset.mean).view(3, 1, 1)
        self.std = torch.tensor(self.preset.std).view(3, 1, 1)

    @classmethod
    def from_config(cls, cfg) -> "TwoViews":
        """The views a PretrainConfig describes (its preset's fit, mean and std; its strengths)."""
        from thyro.image.transforms import resolve_preset

        return cls(cfg.image_size, resolve_preset(cfg.preset, image_size=cfg.image_size), **cfg.view_strengths())

    @staticmethod
    def grey(crop: np.ndarray) -> np.ndarray:
        """(h, w) or (h, w, C) uint8 -> (h, w) uint8, the channels' mean."""
        if crop.ndim == 2:
            return crop
        return np.round(crop[..., :3].astype(np.float32).mean(axis=2)).astype(np.uint8)

    def _window(self, grey: np.ndarray, mask: np.ndarray):
        # Within the field's bounding box; a fan's corners may still fall in, so a
        # window mostly outside the field is drawn again.
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            raise ValueError("field mask is empty: no scan field to draw views from")
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        g, m = grey[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        s = self.strengths.crop_scale
        if s >= 1:
            return g, m
        for _ in range(self.MAX_REDRAWS):
            gw, mw = _random_crop(g, m, s, None)
            if mw.mean() >= self.MIN_FIELD_SHARE:
                return gw, mw
        return g, m

    def view(self, grey: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        # OpenCV for the resampling steps: torchvision's tensor rotation and blur cost
        # ~15 ms a view here (a batched affine grid), as much as the model's step.
        import cv2

        g, m = self._window(grey, mask)
        p, s = self.preset, self.strengths
        x = torch.from_numpy(np.ascontiguousarray(model_input(np.repeat(g[..., None], 3, axis=2), p)[..., 0]))
        x = x[None].float().div_(255)
        inside = torch.from_numpy(place(m.astype(np.uint8) * 255, p.image_size,
                                        fit(m.shape[0], m.shape[1], p.image_size, p.resize)) > 127)
        if s.intensity > 0:
            x = _intensity(x, s.intensity, None)
        if s.speckle > 0:
            x = _speckle(x, s.speckle, None)
        a = x[0].numpy()
        if s.blur_p > 0 and float(torch.rand(1)) < s.blur_p:
            sigma = 0.1 + (s.blur_sigma - 0.1) * float(torch.rand(1))
            a = cv2.GaussianBlur(a, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
        a = a * inside.numpy()  # black outside the field and on the padding, whatever the jitter and blur did
        if float(torch.rand(1)) < s.hflip_p:
            a = a[:, ::-1]
        if s.rotation_degrees > 0:
            angle = (float(torch.rand(1)) * 2 - 1) * s.rotation_degrees
            c = ((a.shape[1] - 1) / 2, (a.shape[0] - 1) / 2)
            a = cv2.warpAffine(np.ascontiguousarray(a), cv2.getRotationMatrix2D(c, angle, 1.0),
                               (a.shape[1], a.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=0)
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None].expand(3, -1, -1)
        return (x - self.mean) / self.std

    def __call__(self, crop: np.ndarray, mask: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        grey = self.grey(crop)
        mask = np.ones(grey.shape, bool) if mask is None else np.asarray(mask, bool)
        if mask.shape != grey.shape:
            raise ValueError(f"field mask {mask.shape} does not match the image {grey.shape}")
        grey = np.where(mask, grey, 0).astype(np.uint8)  # whatever lies outside the field never enters a view
        return self.view(grey, mask), self.view(grey, mask)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """A view back in [0, 1] (for display and tests)."""
        return x * self.std + self.mean
