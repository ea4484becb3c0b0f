import pytest
import torch

from thyro.models import SPECS, WeightsError, build_model, main_logits


@pytest.mark.parametrize("name", sorted(SPECS))
def test_two_class_head(name):
    model = build_model(name).eval()
    size = 96 if name != "inception_v3" else 128
    with torch.no_grad():
        assert main_logits(model(torch.randn(1, 3, size, size))).shape == (1, 2)


def test_inception_aux_logits_in_training():
    model = build_model("inception_v3").train()
    out = model(torch.randn(2, 3, 299, 299))
    assert out.logits.shape == out.aux_logits.shape == (2, 2)


def test_imagenet_weights_missing_is_a_clear_error_not_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="not in the local torch cache"):
        build_model("resnet18", weights="imagenet")


def test_imagenet_weights_from_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from torchvision.models import resnet18
    ref = resnet18(weights=None)  # stands in for the ImageNet file: 1000-class head
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(ref.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = build_model("resnet18", weights="imagenet")
    assert torch.equal(model.conv1.weight, ref.conv1.weight)
    assert model.fc.out_features == 2


def test_state_dict_from_path_round_trips(tmp_path):
    a = build_model("alexnet")
    torch.save(a.state_dict(), tmp_path / "w.pt")
    b = build_model("alexnet", weights=str(tmp_path / "w.pt"))
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_wrong_architecture_weights_rejected(tmp_path):
    torch.save(build_model("alexnet").state_dict(), tmp_path / "w.pt")
    with pytest.raises(WeightsError, match="does not fit"):
        build_model("resnet18", weights=str(tmp_path / "w.pt"))


def test_missing_weights_file_named(tmp_path):
    with pytest.raises(WeightsError, match="nothere.pt"):
        build_model("resnet18", weights=str(tmp_path / "nothere.pt"))
