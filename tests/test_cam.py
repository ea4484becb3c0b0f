import numpy as np
import pytest
import torch

from thyro.explain.cam import GradCAM
from thyro.model.models import build_model, cam_layer


def _margin_target(t):
    """pytorch-grad-cam target: the log-odds z_t - z_(1-t) of a 2-class output."""
    return lambda out: out[..., t] - out[..., 1 - t]


@pytest.mark.parametrize("name", ["resnet18", "alexnet", "vgg16"])
def test_matches_pytorch_grad_cam(name):
    from pytorch_grad_cam import GradCAM as OracleCAM

    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.randn(3, 3, 96, 96)
    targets = [0, 1, 1]
    with GradCAM(model, cam_layer(model, name)) as cam:
        ours = cam(x, target=torch.tensor(targets)).cams.numpy()
    with OracleCAM(model=model, target_layers=[cam_layer(model, name)]) as oracle:
        ref = oracle(input_tensor=x, targets=[_margin_target(t) for t in targets])
    assert ours.shape == ref.shape == (3, 96, 96)
    assert np.abs(ours - ref).max() < 1e-4
    assert ref.max() > 0.99  # a non-trivial map, so the comparison means something


def test_hooks_released_and_single_forward():
    model = build_model("resnet18").eval()
    layer = cam_layer(model, "resnet18")
    calls = []
    h = model.conv1.register_forward_hook(lambda *a: calls.append(1))
    with GradCAM(model, layer) as cam:
        out = cam(torch.randn(4, 3, 64, 64), size=(16, 16))
    h.remove()
    assert len(calls) == 1  # the prediction and the map come from one forward pass
    assert not layer._forward_hooks and not model.conv1._forward_hooks
    assert out.cams.shape == (4, 16, 16) and out.probs.shape == (4, 2)
    assert torch.allclose(out.probs.sum(1), torch.ones(4))
    assert not any(p.grad is not None for p in model.parameters())  # no weight gradients computed


def test_predicted_target_follows_argmax():
    torch.manual_seed(1)
    model = build_model("alexnet").eval()
    x = torch.randn(2, 3, 96, 96)
    with GradCAM(model, cam_layer(model, "alexnet")) as cam:
        out = cam(x)
    assert torch.equal(out.targets, out.logits.argmax(1))


def test_map_ignores_the_heads_shared_component():
    """Only z1 - z0 moves a softmax prediction; the part both head rows share is never
    trained away. A map that depends on it explains noise, not the decision."""
    torch.manual_seed(3)
    model = build_model("resnet18").eval()
    x = torch.randn(2, 3, 64, 64)
    with GradCAM(model, cam_layer(model, "resnet18")) as cam:
        before = cam(x, target=1).cams
        probs = cam(x, target=1).probs
        with torch.no_grad():
            shared = torch.randn(1, model.fc.in_features) * 5 * model.fc.weight.abs().max()
            model.fc.weight += shared  # the same vector added to both rows: softmax unchanged
        after = cam(x, target=1)
    assert torch.allclose(after.probs, probs, atol=1e-5)
    assert torch.allclose(after.cams, before, atol=1e-4)
    assert before.amax((1, 2)).min() > 0.99  # maps that are not all zero


def test_fixed_target_gives_the_same_class_for_every_image():
    torch.manual_seed(4)
    model = build_model("alexnet").eval()
    with GradCAM(model, cam_layer(model, "alexnet")) as cam:
        out = cam(torch.randn(3, 3, 96, 96), target=1)
    assert out.targets.tolist() == [1, 1, 1]
