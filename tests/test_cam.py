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


def test_layers_below_the_target_record_no_graph():
    """The map needs gradients from the target layer up only: the layers below run without
    autograd (no activations kept for a backward pass), and the caller's grad mode is restored."""
    model = build_model("resnet18").eval()
    seen = {}
    h1 = model.conv1.register_forward_hook(lambda m, i, o: seen.__setitem__("stem", o.requires_grad))
    h2 = model.fc.register_forward_hook(lambda m, i, o: seen.__setitem__("head", o.requires_grad))
    for caller_grad in (True, False):
        with torch.set_grad_enabled(caller_grad), GradCAM(model, cam_layer(model, "resnet18")) as cam:
            cam(torch.randn(2, 3, 64, 64), target=1)
            assert torch.is_grad_enabled() == caller_grad
        assert seen == {"stem": False, "head": True}
    h1.remove(), h2.remove()


def _recorded_cam(model, layer, x, target: int) -> torch.Tensor:
    """Grad-CAM over a fully recorded forward pass (autograd on from the input): the reference."""
    import torch.nn.functional as F

    from thyro.explain.cam import _minmax, log_odds

    acts = {}
    h = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    with torch.enable_grad():
        logits = model(x)
        (g,) = torch.autograd.grad(log_odds(logits, torch.full((len(x),), target)).sum(), acts["a"])
    h.remove()
    cam = _minmax(F.relu((g.mean((2, 3), keepdim=True) * acts["a"].detach()).sum(1)))
    return _minmax(F.relu(F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]))


def test_inplace_op_after_the_target_layer_matches_a_fully_recorded_pass():
    """VGG's last conv is followed by ReLU(inplace=True): the captured activations must stay a
    tensor that op may change (not a leaf), with the same map as when everything is recorded."""
    torch.manual_seed(5)
    model = build_model("vgg16").eval()
    layer = model.get_submodule("features.28")
    assert isinstance(model.features[29], torch.nn.ReLU) and model.features[29].inplace
    x = torch.randn(2, 3, 64, 64)
    with GradCAM(model, layer) as cam:
        ours = cam(x, target=1).cams
    ref = _recorded_cam(model, layer, x, 1)
    assert ref.amax((1, 2)).min() > 0.99
    assert torch.allclose(ours, ref, atol=1e-6)
