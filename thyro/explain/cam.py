"""Batched Grad-CAM (Selvaraju et al., 2017) in the prediction's own forward pass.

One forward pass gives the logits and, through a forward hook, the target
layer's activations; one `torch.autograd.grad` call takes the gradient of the
target's score down to that layer only (not through the rest of the network).
The layers below the target run without autograd: the map needs no gradient
there, so they keep no activations for a backward pass and take the inference
kernels (max-pool without indices); the graph starts at the target's output.
Same numbers as a fully recorded pass (bit-identical for the four models, fp32
and bf16); ResNet18 on one CPU thread, batch 32, two runs: 128 px fp32 11.0-12.2 ->
10.2-10.7 ms per image, 224 px bf16 channels_last 10.0-10.8 -> 9.5-10.0.
Hooks live only inside the `GradCAM` context manager.

The score is the target's log-odds, z_t - logsumexp(z_others) (for two classes
z_t - z_other), not the raw logit z_t. With a softmax head only differences of
logits move the prediction: the part the two head rows share, (W0 + W1) / 2,
gets exactly opposite gradients from cross-entropy or focal loss and never
leaves its random initialisation. A map of one raw logit is then largely that
random projection (for ResNet it is exactly ReLU(W_c . A)); the margin cancels it.

Post-processing follows pytorch-grad-cam (the oracle in the tests): ReLU,
per-image min-max scaling, bilinear resize to the input size, scaling again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from thyro.model.models import main_logits

_EPS = 1e-7


def _minmax(m: torch.Tensor) -> torch.Tensor:
    """Scale each (H, W) map of an (N, H, W) batch to [0, 1]."""
    flat = m.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    m = m - lo
    hi = m.flatten(1).max(1).values.view(-1, 1, 1)
    return m / (hi + _EPS)


def log_odds(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """z_t - logsumexp(z_j, j != t) per row: log p_t / (1 - p_t), what the prediction depends on."""
    z_t = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float("-inf"))
    return z_t - torch.logsumexp(others, dim=1)


@dataclass
class CamOutput:
    logits: torch.Tensor   # (N, C), detached
    probs: torch.Tensor    # (N, C)
    targets: torch.Tensor  # (N,) class index each map explains
    cams: torch.Tensor     # (N, H, W) in [0, 1], at `size`


class GradCAM:
    """with GradCAM(model, layer) as cam: out = cam(x)"""

    def __init__(self, model: nn.Module, layer: nn.Module):
        self.model = model
        self.layer = layer
        self._acts: torch.Tensor | None = None
        self._handle = None

    def __enter__(self) -> "GradCAM":
        def hook(_m, _inp, out):
            if torch.is_grad_enabled():  # a forward pass not run by __call__: record, change nothing
                self._acts = out
                return None
            # __call__ ran the layers below without autograd: the graph starts here. A clone, not
            # the detached leaf itself, so an in-place op after the layer (ReLU(inplace=True))
            # stays legal and changes the captured activations, as in a fully recorded pass.
            torch.set_grad_enabled(True)
            self._acts = out.detach().requires_grad_(True).clone()
            return self._acts
        self._handle = self.layer.register_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._acts = None

    def __call__(self, x: torch.Tensor, target: str | int | torch.Tensor = "predicted",
                 size: tuple[int, int] | None = None, autocast_dtype: torch.dtype | None = None) -> CamOutput:
        if self._handle is None:
            raise RuntimeError("use GradCAM inside a `with` block")
        self.model.eval()
        x = x.detach().requires_grad_(False)
        # no_grad until the hook turns autograd on at the target layer; leaving the block restores the mode
        with torch.no_grad():
            if autocast_dtype is not None:
                with torch.autocast(device_type=x.device.type, dtype=autocast_dtype):
                    logits = main_logits(self.model(x))
            else:
                logits = main_logits(self.model(x))
            acts = self._acts
            if acts is None or not acts.requires_grad:
                raise RuntimeError("the CAM layer produced no differentiable activation")
            if isinstance(target, torch.Tensor):
                tgt = target.to(logits.device).long()
            elif target == "predicted":
                tgt = logits.argmax(1)
            else:
                tgt = torch.full((len(x),), int(target), device=logits.device, dtype=torch.long)
            score = log_odds(logits.float(), tgt).sum()
            (grads,) = torch.autograd.grad(score, acts)
        acts, grads = acts.detach().float(), grads.float()
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * acts).sum(1))
        cam = _minmax(cam)
        size = size or tuple(x.shape[-2:])
        cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        cam = _minmax(F.relu(cam))
        logits = logits.detach().float()
        self._acts = None  # drop the graph's activations now, not at the next call
        return CamOutput(logits=logits, probs=torch.softmax(logits, 1), targets=tgt.detach(), cams=cam)
