import torch
import torch.nn.functional as F

from thyro.model.losses import FocalLoss


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


def test_gamma_below_one_gives_finite_gradients_on_confident_logits():
    # p_t rounds to 1 in float32: (1 - p_t)^0.5 had an infinite derivative there (NaN gradients).
    logits = torch.tensor([[30.0, -30.0], [0.3, -0.1], [-50.0, 50.0]], requires_grad=True)
    y = torch.tensor([0, 1, 1])
    FocalLoss(gamma=0.5)(logits, y).backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_value_matches_the_formula_in_float64():
    # FL = -(1 - p_t)^gamma log p_t, computed directly in float64 where it is well conditioned.
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(32, 2, generator=g) * 3
    y = torch.randint(0, 2, (32,), generator=g)
    p_t = torch.softmax(logits.double(), 1).gather(1, y[:, None]).squeeze(1)
    ref = (-(1 - p_t) ** 1.5 * torch.log(p_t)).mean()
    assert torch.isclose(FocalLoss(gamma=1.5)(logits, y).double(), ref, rtol=1e-5)
