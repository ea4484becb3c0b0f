"""Deletion / insertion curves (RISE) on a toy model whose evidence is a known square."""

import numpy as np
import torch
import torch.nn as nn

from thyro.explain import faithfulness
from thyro.explain.cam import GradCAM

S = 32
SQUARE = (slice(8, 16), slice(12, 20))


class SquareModel(nn.Module):
    """logit_malignant = mean brightness inside a fixed square; the rest of the image is ignored.
    `gate` keeps the square's pixels only: it is the layer Grad-CAM hooks."""

    def __init__(self):
        super().__init__()
        mask = torch.zeros(1, 1, S, S)
        mask[0, 0, SQUARE[0], SQUARE[1]] = 1
        self.register_buffer("mask", mask)
        self.gate = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.gate.weight)

    def forward(self, x):
        a = self.gate(x[:, :1] * self.mask)                     # (N, 1, S, S)
        z1 = (a.sum((1, 2, 3)) / self.mask.sum() - 0.5) * 10     # evidence of malignancy
        return torch.stack([torch.zeros_like(z1), z1], 1)


def _inputs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, S, S, generator=g) * 0.3
    x[:, :, SQUARE[0], SQUARE[1]] += 0.7  # bright evidence inside the square
    return x


def _score(model):
    return lambda x: torch.softmax(model(x), 1)[:, 1]


def test_the_true_evidence_map_deletes_faster_and_inserts_faster_than_random():
    model, x = SquareModel().eval(), _inputs()
    truth = torch.zeros(len(x), S, S)
    truth[:, SQUARE[0], SQUARE[1]] = 1
    c = faithfulness.curves(_score(model), x, truth, steps=16)
    s = faithfulness.summarize(c)
    assert s["deletion_ratio"] < 0.5 and s["insertion_ratio"] > 1.3
    # by hand: the square is 64 of 1024 pixels; once the top 1/16 is deleted, every pixel of it is blurred
    assert np.all(c["deletion"][:, 1] < c["deletion"][:, 0] - 0.2)


def test_grad_cam_of_the_toy_model_finds_the_square_and_is_faithful():
    model, x = SquareModel().eval(), _inputs(seed=1)
    with GradCAM(model, model.gate) as cam:
        maps = cam(x, target=1).cams
    inside = maps[:, SQUARE[0], SQUARE[1]].sum((1, 2)) / maps.sum((1, 2))
    assert inside.min() > 0.95
    s = faithfulness.summarize(faithfulness.curves(_score(model), x, maps, steps=16))
    assert s["deletion_ratio"] < 0.5 and s["insertion_ratio"] > 1.3


def test_a_map_pointing_away_is_worse_than_random():
    model, x = SquareModel().eval(), _inputs(seed=2)
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    away = ((yy - 12.0) ** 2 + (xx - 16.0) ** 2).expand(len(x), S, S)  # the square ranks last
    s = faithfulness.summarize(faithfulness.curves(_score(model), x, away, steps=16))
    assert s["deletion_ratio"] > 1.0  # the evidence survives longer than under a random order
