import numpy as np
import pytest
import torch

from thyro.cam import GradCAM
from thyro.models import build_model, cam_layer


@pytest.mark.parametrize("name", ["resnet18", "alexnet", "vgg16"])
def test_matches_pytorch_grad_cam(name):
    from pytorch_grad_cam import GradCAM as OracleCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.randn(3, 3, 96, 96)
    targets = [0, 1, 1]
    with GradCAM(model, cam_layer(model, name)) as cam:
        ours = cam(x, target=torch.tensor(targets)).cams.numpy()
    with OracleCAM(model=model, target_layers=[cam_layer(model, name)]) as oracle:
        ref = oracle(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
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
