"""Preprocessing presets: plain data, saved in every run's model card.

A `Preset` names how a screen becomes the model's input (crop to the scan field or not, mark
suppression, resize, normalisation, training augmentation). It is read back by the predictor,
so the pixels a model sees at scoring time are made exactly as at training time. This module
imports no torch: the score job's driver and its decode tasks need presets, not tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    name: str
    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # "squash": Resize((S, S)) as the study did (distorts nodule geometry differently per
    # scanner); "letterbox": scale to fit, pad with black, aspect kept.
    resize: str = "squash"
    # "none": the whole screen; "auto": crop to the scan field's box (DICOM ultrasound
    # regions where present, else found in the image), black outside the field;
    # "inscribed": the largest rectangle inside the field, so no field outline (a fan's
    # black corners tell the probe, the scanner, the centre) reaches the model.
    field: str = "none"
    # Multi-pane screens: the "largest" pane, or "all" panes (their bounding box, black between).
    panes: str = "largest"
    # Inpaint calipers, dotted lines, coloured marks and measurement text inside the field.
    suppress_marks: bool = False
    # Which frame of a multi-frame DICOM trains, is scored by default and is shown in reports.
    frame: str = "middle"
    # Training-only augmentation. "study": flip and rotation; "robust": also a random crop
    # inside the field, brightness/contrast/gamma jitter and speckle-like noise.
    augment: str = "study"
    hflip_p: float = 0.5
    rotation_degrees: float = 15.0
    crop_scale: float = 1.0   # robust: smallest fraction of the field's area a random crop keeps
    intensity: float = 0.0    # robust: jitter strength (brightness +-i/2, contrast 1+-i, gamma e^+-i)
    speckle: float = 0.0      # robust: sd of multiplicative, grain-sized noise

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preset":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}  # cards written before a field existed
        d["mean"], d["std"] = tuple(d.get("mean", IMAGENET_MEAN)), tuple(d.get("std", IMAGENET_STD))
        return cls(**d)


PRESETS: dict[str, Preset] = {
    # The study: the whole image squashed to 224 px, flips and rotations, ImageNet normalisation.
    "study": Preset("study"),
    # Inception v3 is defined at 299 px.
    "study-299": Preset("study-299", image_size=299),
    # The ablation's steps towards `robust` (benchmarks/real_data.py).
    "field": Preset("field", resize="letterbox", field="inscribed"),
    "field-marks": Preset("field-marks", resize="letterbox", field="inscribed", suppress_marks=True),
    # Chosen by the real-data ablation (README, "Real ultrasound").
    "robust": Preset("robust", resize="letterbox", field="inscribed", suppress_marks=True, augment="robust",
                     rotation_degrees=10.0, crop_scale=0.6, intensity=0.3, speckle=0.15),
}

_CHOICES = {"resize": ("squash", "letterbox"), "field": ("none", "auto", "inscribed"), "panes": ("largest", "all", "each"),
            "frame": ("first", "middle"), "augment": ("study", "robust")}


def resolve_preset(name: str, image_size: int | None = None, **overrides) -> Preset:
    """A named preset with any of its fields overridden (None leaves a field as it is)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preprocessing preset {name!r}; known: {sorted(PRESETS)}")
    changes = {k: v for k, v in dict(image_size=image_size, **overrides).items() if v is not None}
    for k, v in changes.items():
        if k in _CHOICES and v not in _CHOICES[k]:
            raise ValueError(f"preprocess.{k}: {v!r} is not one of {_CHOICES[k]}")
    return replace(PRESETS[name], **changes)
