"""Map canonical images to malignancy probabilities, labels and Grad-CAM maps.

Loads a saved run (weights + preprocessing preset + model card) once; the
score job runs one Predictor per Ray Data actor. Plain torch.

Maps come back in the original image's geometry (over the crop the model saw,
in its true aspect ratio), with `cam_in_field`: the share of the map's mass
that lies on the scan field rather than on borders, text or padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from thyro.explain.cam import GradCAM
from thyro.image.geometry import Geometry, model_map_to_crop, original_mask_to_model, place
from thyro.image.preprocess import Cropped, crop_field, crop_one
from thyro.image.transforms import Preset, preprocess_batch
from thyro.model.checkpoint import load_run
from thyro.model.engine import resolve_device, sigmoid
from thyro.model.models import cam_layer

TARGETS = {"predicted": "predicted", "malignant": 1, "benign": 0}


def field_mask_on_input(c: Cropped, p: Preset, original: np.ndarray | None = None) -> np.ndarray:
    """The scan field on the model's square input (False on padding). A preset that does not
    crop (field: none) finds the field in the original image, for measuring only."""
    g = c.geometry(p)
    if p.field != "none":
        return place((c.field_mask * np.uint8(255)), p.image_size, g.inner) > 127
    if original is None:
        raise ValueError("the original image is needed to find the field of an uncropped input")
    return field_mask_from_view(original, g)


def field_mask_from_view(view: np.ndarray, g: Geometry) -> np.ndarray:
    """The scan field on the model's square input of an uncropped input, found on `view`: the whole
    image g maps from, at its own size or smaller (the actor's grey working copy,
    `thyro.data.jpeg_batch.field_view` at `field.working_shape`, which `detect_fields` takes as it is)."""
    from thyro.image.field import detect_fields, union_mask

    return original_mask_to_model(union_mask(detect_fields(view), view.shape), g.at_shape(view.shape))


def cam_in_field(cam_model: np.ndarray, field_model: np.ndarray) -> float:
    """Share of a model-space map's mass inside the field (NaN for an all-zero map)."""
    cam = np.asarray(cam_model, np.float64)
    if field_model.shape != cam.shape:
        from PIL import Image

        field_model = np.asarray(Image.fromarray(field_model).resize(cam.shape[::-1], Image.NEAREST))
    total = cam.sum()
    return float(cam[field_model].sum() / total) if total > 0 else float("nan")


@dataclass
class Prediction:
    prob_malignant: np.ndarray   # (N,) calibrated (card's temperature)
    margin: np.ndarray           # (N,) log-odds z1 - z0, before temperature
    label: np.ndarray            # (N,) 1 = malignant at the card's threshold
    cam_model: np.ndarray        # (N, c, c) float32, over the model's square input
    target: np.ndarray           # (N,) the class each map explains


class Predictor:
    def __init__(self, run: str, device: str = "auto", precision: str = "fp32",
                 cam_size: int = 56, cam_target: str = "malignant", cam_layer_name: str | None = None):
        self.device = resolve_device(device)
        model, self.card = load_run(run)
        self.model = model.to(self.device).eval()
        self.preset = Preset.from_dict(self.card["inputs"]["preprocessing"])
        self.threshold = float(self.card["outputs"]["threshold"])
        self.temperature = float(self.card["outputs"].get("temperature", 1.0))
        self.cam_layer_name = cam_layer_name or self.card["model"].get("cam_layer")
        self.layer = cam_layer(self.model, self.card["model"]["architecture"], self.cam_layer_name)
        self.precision = precision
        self.cam_size = cam_size
        if cam_target not in TARGETS:
            raise ValueError(f"cam target {cam_target!r}: expected one of {sorted(TARGETS)}")
        self.cam_target = cam_target

    @property
    def model_id(self) -> str:
        return self.card.get("model_id") or self.card["name"]

    def crops(self, image: np.ndarray, regions=None) -> list[Cropped]:
        return crop_field(image, self.preset, regions)

    def crop(self, image: np.ndarray, regions=None) -> Cropped:
        """The one crop training and evaluation use (panes: each -> the largest pane)."""
        return crop_one(image, self.preset, regions)

    def predict_tensor(self, x: torch.Tensor) -> Prediction:
        """Preprocessed (N, 3, S, S) -> probabilities, labels and model-space maps (cam_size x cam_size)."""
        dtype = torch.bfloat16 if self.precision == "bf16" else None
        with GradCAM(self.model, self.layer) as cam:
            out = cam(x.to(self.device), target=TARGETS[self.cam_target], size=(self.cam_size, self.cam_size),
                      autocast_dtype=dtype)
        margin = (out.logits[:, 1] - out.logits[:, 0]).cpu().numpy().astype(np.float64)
        prob = sigmoid(margin / self.temperature)
        return Prediction(prob_malignant=prob, margin=margin, label=(prob >= self.threshold).astype(np.int64),
                          cam_model=out.cams.cpu().numpy().astype(np.float32), target=out.targets.cpu().numpy())

    def faithfulness(self, x: torch.Tensor, out: Prediction, steps: int = 16) -> dict[str, np.ndarray]:
        """Per-image deletion / insertion AUCs (RISE) of the maps in `out`, and of a random pixel
        order; NaN for an all-zero map (it gives no order). The probability followed is the
        explained class's, as the model outputs it."""
        from thyro.explain import faithfulness
        from thyro.model.models import main_logits

        n = len(x)
        keep = out.cam_model.reshape(n, -1).max(1) > 0
        res = {k: np.full(n, np.nan) for k in ("auc_deletion", "auc_insertion", "auc_deletion_random",
                                               "auc_insertion_random")}
        if not keep.any():
            return res
        dev, dtype = self.device, torch.bfloat16 if self.precision == "bf16" else None
        targets = torch.from_numpy(out.target[keep]).to(dev)

        @torch.no_grad()
        def score(batch: torch.Tensor) -> torch.Tensor:  # one batch = every kept image, in order
            with torch.autocast(device_type=dev.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = main_logits(self.model(batch.to(dev))).float()
            return torch.softmax(logits, 1).gather(1, targets[:, None])[:, 0]

        c = faithfulness.curves(score, x[torch.from_numpy(keep)], torch.from_numpy(out.cam_model[keep]),
                                steps=steps, batch_size=int(keep.sum()))
        for k in res:
            res[k][keep] = c[k]
        return res

    def predict_crops(self, crops: list[Cropped]) -> Prediction:
        return self.predict_tensor(preprocess_batch([c.image for c in crops], self.preset))

    def geometry(self, c: Cropped) -> Geometry:
        return c.geometry(self.preset)

    def crop_map(self, cam_model: np.ndarray, c: Cropped) -> np.ndarray:
        """A model-space map -> over the crop in its true aspect, at most cam_size on its long side."""
        return model_map_to_crop(cam_model, c.geometry(self.preset), self.cam_size)

    def predict(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Canonical images (one crop each: the largest pane) -> probabilities, labels and maps over
        the crops (float16, a list: crops differ in shape), with cam_in_field."""
        crops = [self.crop(img) for img in images]
        out = self.predict_crops(crops)
        return {"prob_malignant": out.prob_malignant, "label": out.label, "margin": out.margin,
                "cam": [self.crop_map(m, c).astype(np.float16) for m, c in zip(out.cam_model, crops)],
                "cam_in_field": np.array([cam_in_field(m, field_mask_on_input(c, self.preset, img))
                                          for m, c, img in zip(out.cam_model, crops, images)]),
                "geometry": [c.geometry(self.preset) for c in crops]}
