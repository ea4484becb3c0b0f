"""Classifiers built by name, each with a 2-class head and its Grad-CAM layer.

`weights` is one of (thyro.model.weights finds, fetches and verifies them):
- None: random init;
- "imagenet": torchvision's ImageNet weights from the torch hub cache, or
  downloaded there with their hash checked unless THYRO_OFFLINE=1;
- a folder (ending in "/") of torchvision's files, as a Ray job's driver
  leaves in <out>/weights/ for its workers;
- a local path or fsspec URI of a state_dict (loaded with weights_only=True).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torchvision import models as tvm

from thyro.model import weights as _weights
from thyro.model.weights import WeightsError


class Float32Linear(nn.Linear):
    """The classifier head, always in float32, also under bf16 autocast.

    In bf16 the logits keep ~3 significant digits: 2,001 distinct test images
    collapsed into 975 probabilities, ties that change AUCs, thresholds and
    Grad-CAM's margin. The trunk may run in bf16; the head costs nothing in fp32.
    Same parameters (and state_dict keys) as nn.Linear.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.float())


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[], nn.Module]
    imagenet: object            # torchvision WeightsEnum member
    head: Callable[[nn.Module], nn.Linear]   # the final classifier layer
    set_head: Callable[[nn.Module, nn.Linear], None]
    cam_layer: str              # dotted module path Grad-CAM hooks
    input_size: int             # native input size; default preset follows it


def _set_attr(path: str):
    def setter(m: nn.Module, layer: nn.Linear) -> None:
        parent = m.get_submodule(path.rsplit(".", 1)[0]) if "." in path else m
        setattr(parent, path.rsplit(".", 1)[-1], layer)
    return setter


# CAM layers: the output of the last convolutional block. For AlexNet and VGG
# that is the ReLU after the last conv (its inplace op would otherwise rewrite
# the hooked conv output).
SPECS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(lambda: tvm.resnet18(weights=None), tvm.ResNet18_Weights.IMAGENET1K_V1,
                          lambda m: m.fc, _set_attr("fc"), "layer4", 224),
    "alexnet": ModelSpec(lambda: tvm.alexnet(weights=None), tvm.AlexNet_Weights.IMAGENET1K_V1,
                         lambda m: m.classifier[6], _set_attr("classifier.6"), "features.11", 224),
    "vgg16": ModelSpec(lambda: tvm.vgg16(weights=None), tvm.VGG16_Weights.IMAGENET1K_V1,
                       lambda m: m.classifier[6], _set_attr("classifier.6"), "features.29", 224),
    "inception_v3": ModelSpec(lambda: tvm.inception_v3(weights=None, aux_logits=True, init_weights=True),
                              tvm.Inception_V3_Weights.IMAGENET1K_V1,
                              lambda m: m.fc, _set_attr("fc"), "Mixed_7c", 299),
}


def _replace_heads(model: nn.Module, spec: ModelSpec, num_classes: int) -> None:
    spec.set_head(model, Float32Linear(spec.head(model).in_features, num_classes))
    if getattr(model, "AuxLogits", None) is not None:
        model.AuxLogits.fc = Float32Linear(model.AuxLogits.fc.in_features, num_classes)


def imagenet_state_dict(name: str) -> dict:
    """torchvision's ImageNet weights: cached, else downloaded and verified where allowed."""
    return _weights.imagenet_state_dict(name)


read_state_dict = _weights.read_state_dict


def _load_backbone(model: nn.Module, sd: dict, source: str) -> list[str]:
    """Load every tensor whose name and shape match; a head of another width is skipped."""
    own = model.state_dict()
    skipped = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable]
    unexpected = [k for k in sd if k not in own]
    heads = ("fc.", "classifier.6.", "AuxLogits.fc.")
    if unexpected or any(not k.startswith(heads) for k in missing):
        bad = (unexpected or [k for k in missing if not k.startswith(heads)])[:3]
        raise WeightsError(f"{source}: state_dict does not fit this architecture (e.g. {bad})")
    model.load_state_dict(usable, strict=False)
    return skipped


def build_model(name: str, weights: str | None = None, num_classes: int = 2,
                transform_input: bool | None = None, offline: bool = False) -> nn.Module:
    """`transform_input` (Inception v3 only): None follows the weights (True for
    torchvision's ImageNet weights); a reloaded run passes what its card recorded."""
    if name not in SPECS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(SPECS)}")
    spec = SPECS[name]
    model = spec.build()
    _replace_heads(model, spec, num_classes)
    if weights:
        sd = _weights.state_dict(name, weights, offline=offline)
        _load_backbone(model, sd, weights)
        if _weights.is_imagenet(weights) and name == "inception_v3" and transform_input is None:
            transform_input = True  # torchvision's Inception weights expect it
    if name == "inception_v3" and transform_input is not None:
        model.transform_input = bool(transform_input)
    return model


def cam_layer(model: nn.Module, name: str, layer: str | None = None) -> nn.Module:
    """The module Grad-CAM hooks: the model's last conv block, or `layer` (e.g. ResNet's
    "layer3", twice the resolution of "layer4")."""
    path = layer or SPECS[name].cam_layer
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"cam.layer {path!r} is not a module of {name}") from None


def main_logits(out) -> torch.Tensor:
    """Inception returns (logits, aux_logits) in training mode; take the logits."""
    return out.logits if hasattr(out, "logits") else out
