"""bf16 may run the convolution trunk; probabilities are always made in float32."""

import numpy as np
import torch
import torch.nn as nn
from scipy.stats import rankdata
from torch.utils.data import DataLoader, TensorDataset

from thyro.model.engine import predict_margin
from thyro.model.models import Float32Linear, build_model


def _exact_trunk_model():
    """A trunk that bf16 computes exactly (power-of-two weights, inputs k/8), then the fp32 head:
    any difference between bf16 and fp32 evaluation can only come from the head."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1, bias=False)
    with torch.no_grad():
        # distinct powers of two per input channel: 16^3 input combinations give distinct,
        # bf16-exact features (at most 8 significant bits)
        conv.weight.copy_(torch.tensor([[1.0, 0.5, 0.25], [2.0, 1.0, 0.5], [0.25, 2.0, 1.0],
                                        [0.5, 0.25, 2.0]]).view(4, 3, 1, 1))
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), Float32Linear(4, 2)).eval()


def test_bf16_evaluation_keeps_fp32_ranks():
    model = _exact_trunk_model()
    g = torch.Generator().manual_seed(1)
    x = (torch.randint(0, 16, (2001, 3, 1, 1), generator=g).float() / 8).expand(2001, 3, 4, 4).contiguous()
    loader = DataLoader(TensorDataset(x, torch.zeros(2001, dtype=torch.long)), batch_size=256)
    _, m32 = predict_margin(model, loader, torch.device("cpu"), "fp32")
    _, m16 = predict_margin(model, loader, torch.device("cpu"), "bf16")
    assert len(np.unique(m16)) == len(np.unique(m32))  # no collapse into ties (was 975 of 2,001 values)
    assert np.array_equal(rankdata(m16), rankdata(m32))


def test_every_models_head_is_float32_under_autocast():
    model = build_model("resnet18").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 64, 64))
    assert out.dtype == torch.float32
