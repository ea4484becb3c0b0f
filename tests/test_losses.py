import torch
import torch.nn.functional as F

from thyro.losses import FocalLoss


def test_gamma_zero_no_alpha_equals_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 2, generator=g)
    y = torch.randint(0, 2, (64,), generator=g)
    assert torch.allclose(FocalLoss(gamma=0.0, alpha=None)(logits, y), F.cross_entropy(logits, y), atol=1e-6)


def test_focusing_downweights_easy_examples():
    easy = torch.tensor([[4.0, -4.0]])
    hard = torch.tensor([[0.2, -0.2]])
    y = torch.tensor([0])
    fl, ce = FocalLoss(gamma=2.0), torch.nn.CrossEntropyLoss()
    assert fl(easy, y) / ce(easy, y) < fl(hard, y) / ce(hard, y)


def test_alpha_weighs_malignant_class():
    logits = torch.zeros(2, 2)
    y = torch.tensor([0, 1])
    per = [FocalLoss(gamma=0.0, alpha=0.75)(logits[i:i + 1], y[i:i + 1]) for i in range(2)]
    assert torch.isclose(per[1] / per[0], torch.tensor(3.0))
