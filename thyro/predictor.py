"""Map canonical images to malignancy probabilities, labels and Grad-CAM maps.

Loads a saved run (weights + preprocessing preset + model card) once; the
score job runs one Predictor per Ray Data actor. Plain torch.
"""

from __future__ import annotations

import numpy as np
import torch

from thyro.cam import GradCAM
from thyro.checkpoint import load_run
from thyro.engine import resolve_device
from thyro.models import cam_layer
from thyro.transforms import Preset, preprocess_batch


class Predictor:
    def __init__(self, run: str, device: str = "auto", precision: str = "fp32",
                 cam_size: int = 56, cam_target: str = "predicted"):
        self.device = resolve_device(device)
        model, self.card = load_run(run)
        self.model = model.to(self.device).eval()
        self.preset = Preset.from_dict(self.card["inputs"]["preprocessing"])
        self.threshold = float(self.card["outputs"]["threshold"])
        self.layer = cam_layer(self.model, self.card["model"]["architecture"])
        self.precision = precision
        self.cam_size = cam_size
        self.cam_target = cam_target

    @property
    def model_id(self) -> str:
        return self.card.get("model_id") or self.card["name"]

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        return preprocess_batch(images, self.preset)

    def predict_tensor(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Preprocessed (N, 3, S, S) -> prob_malignant (N,), label (N,), cam (N, c, c) float16."""
        target = {"predicted": "predicted", "malignant": 1, "benign": 0}[self.cam_target]
        dtype = torch.bfloat16 if self.precision == "bf16" else None
        with GradCAM(self.model, self.layer) as cam:
            out = cam(x.to(self.device), target=target, size=(self.cam_size, self.cam_size),
                      autocast_dtype=dtype)
        prob = out.probs[:, 1].cpu().numpy()
        return {"prob_malignant": prob, "label": (prob >= self.threshold).astype(np.int64),
                "cam": out.cams.cpu().numpy().astype(np.float16)}

    def predict(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        return self.predict_tensor(self.preprocess(images))
