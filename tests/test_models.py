import pytest
import torch

from thyro.model.models import SPECS, WeightsError, build_model, main_logits


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


def test_imagenet_weights_missing_offline_is_a_clear_error_not_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("THYRO_OFFLINE", "1")
    with pytest.raises(WeightsError, match="not in the local torch cache and downloads are off"):
        build_model("resnet18", weights="imagenet")


def test_imagenet_weights_from_local_cache(tmp_path, monkeypatch):
    import hashlib

    from thyro.model import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("THYRO_OFFLINE", "1")  # found in the cache: nothing to fetch
    from torchvision.models import resnet18
    ref = resnet18(weights=None)  # stands in for the ImageNet file: 1000-class head
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    path = tmp_path / "hub" / "checkpoints" / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    # torchvision's file name carries its sha256 prefix; name this one after its own
    name = f"resnet18-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}.pth"
    path.rename(path.with_name(name))
    monkeypatch.setattr(weights, "imagenet_url", lambda n: f"https://download.pytorch.org/models/{name}")
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
