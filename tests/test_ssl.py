"""SimSiam: its loss against a hand computation, the stop-gradient, and the trunk it hands the classifier."""

import math

import pytest
import torch
import torch.nn as nn

from thyro.model.ssl import SimSiam, backbone_state_dict, simsiam_loss


def test_loss_is_the_symmetric_negative_cosine_by_hand():
    p1, z2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])   # cos = 1/sqrt(2)
    p2, z1 = torch.tensor([[0.0, 1.0]]), torch.tensor([[3.0, 4.0]])   # cos = 4/5
    want = -0.5 * (1 / math.sqrt(2)) - 0.5 * 0.8
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(want, abs=1e-6)


def test_loss_matches_torch_cosine_similarity_on_a_batch():
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(5, 7, generator=g) for _ in range(4))
    cos = nn.functional.cosine_similarity
    want = -0.5 * cos(p1, z2).mean() - 0.5 * cos(p2, z1).mean()
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(want.item(), abs=1e-6)


def test_stop_gradient_leaves_the_targets_without_gradient():
    p1 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    p2 = torch.tensor([[0.0, 1.0]], requires_grad=True)
    z1 = torch.tensor([[3.0, 4.0]], requires_grad=True)
    z2 = torch.tensor([[1.0, 1.0]], requires_grad=True)
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    # d/dp of -0.5 cos(p, z) = -0.5 (z / (|p||z|) - (p.z) p / (|p|^3 |z|)); p1 = (1, 0), z2 = (1, 1):
    assert p1.grad.tolist()[0] == pytest.approx([0.0, -0.5 / math.sqrt(2)], abs=1e-6)


def test_identical_views_with_identity_predictor_give_minus_one():
    torch.manual_seed(0)
    m = SimSiam("resnet18", proj_dim=32, pred_dim=8)
    m.predictor = nn.Identity()   # p = z, and both views are the same images: cos = 1 everywhere
    x = torch.randn(4, 3, 32, 32)
    assert m(x, x).item() == pytest.approx(-1.0, abs=1e-5)


def test_only_the_prediction_branch_carries_gradient_into_the_trunk():
    """With a zero predictor the loss's gradient could only reach the trunk through the
    target branch z; the stop-gradient must leave every trunk gradient at exactly zero."""
    torch.manual_seed(0)
    m = SimSiam("resnet18", proj_dim=16, pred_dim=8)
    last = m.predictor[-1]
    nn.init.zeros_(last.weight)
    nn.init.constant_(last.bias, 1.0)   # p is the constant (1, ..., 1): no path back through p
    m(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)).backward()
    grads = [p.grad for p in m.trunk.parameters()]
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    assert torch.count_nonzero(last.weight.grad) > 0   # while the predictor does learn


def test_backbone_state_dict_has_the_classifier_trunk_names():
    from thyro.model.models import build_model

    m = SimSiam("resnet18", proj_dim=16, pred_dim=8)
    sd = backbone_state_dict(m)
    clf = set(build_model("resnet18").state_dict())
    assert clf - set(sd) == {"fc.weight", "fc.bias"} and set(sd) <= clf


def test_unsupported_backbone_is_named():
    with pytest.raises(ValueError, match="inception_v3"):
        SimSiam("inception_v3")


def test_collapse_monitor_by_construction():
    from thyro.model.ssl import collapse_std

    assert collapse_std(torch.ones(16, 8)) == 0.0                 # every image the same output
    eye = torch.eye(4).repeat(4, 1)                               # one-hot rows, each dim on 1 in 4
    want = torch.tensor([1.0] * 4 + [0.0] * 12).std().item()      # the std of one column, by hand
    assert collapse_std(eye) == pytest.approx(want, abs=1e-6)
