"""ImageNet weights on demand: downloaded once over HTTP (a server on 127.0.0.1 stands in
for download.pytorch.org), hash-checked, cached; offline a clear error; a job's driver
hands its copy to the workers through <out>/weights/."""

import functools
import hashlib
import http.server
import io
import os
import threading

import pytest
import torch
from torchvision.models import resnet18

from thyro.config import load_config
from thyro.data import storage
from thyro.model import weights
from thyro.model.models import build_model
from thyro.model.weights import WeightsError


@pytest.fixture(scope="module")
def resnet_file():
    """(bytes, reference model) of a random resnet18 state_dict: stands in for the ImageNet file."""
    ref = resnet18(weights=None)
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    return buf.getvalue(), ref


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; `gets` lists every GET path."""
    root = tmp_path / "served"
    root.mkdir()
    gets: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            gets.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", gets
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(weights.OFFLINE_ENV, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _serve(root, base, data: bytes, prefix: str | None = None) -> str:
    name = f"resnet18-{prefix or hashlib.sha256(data).hexdigest()[:8]}.pth"
    (root / name).write_bytes(data)
    return f"{base}/{name}"


def test_download_checks_the_hash_and_caches_once(server, torch_home, resnet_file):
    root, base, gets = server
    data, _ = resnet_file
    url = _serve(root, base, data)
    path = weights.download(url)
    assert path == str(torch_home / os.path.basename(url))
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert weights.download(url) == path
    assert len(gets) == 1  # the second call found the cached file


def test_wrong_hash_is_an_error_and_leaves_nothing_cached(server, torch_home, resnet_file):
    root, base, _ = server
    data, _ = resnet_file
    real = hashlib.sha256(data).hexdigest()[:8]
    wrong = "".join("0" if c != "0" else "1" for c in real)  # differs from the real prefix in every digit
    url = _serve(root, base, data, prefix=wrong)
    with pytest.raises(WeightsError, match=f"hash.*{wrong}"):
        weights.download(url)
    assert not torch_home.exists() or os.listdir(torch_home) == []


def test_offline_imagenet_names_the_file_and_the_alternative(torch_home, monkeypatch):
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    with pytest.raises(WeightsError) as e:
        build_model("resnet18", weights="imagenet")
    msg = str(e.value)
    for part in ("resnet18-f37072fd.pth", str(torch_home), "THYRO_OFFLINE=1", "model.weights", "s3://"):
        assert part in msg
    assert not torch_home.exists() or os.listdir(torch_home) == []


def test_unreachable_server_gives_the_same_guidance(torch_home, monkeypatch):
    import socket

    with socket.socket() as s:  # a port on 127.0.0.1 that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(weights, "imagenet_url", lambda name: f"http://127.0.0.1:{port}/resnet18-f37072fd.pth")
    with pytest.raises(WeightsError, match=r"could not download .*Put resnet18-f37072fd.pth"):
        weights.imagenet_path("resnet18")


def test_offline_job_fails_before_ray_and_writes_nothing(tmp_path, torch_home):
    import ray

    from thyro.distributed.common import job_setup

    cfg = load_config(None, [{"model": {"weights": "imagenet", "offline": True}}])
    ray_before = ray.is_initialized()
    with pytest.raises(WeightsError, match="model.offline is true"):
        job_setup(cfg, str(tmp_path / "out"), log=lambda s: None)
    assert not (tmp_path / "out").exists()  # no inputs written
    assert ray.is_initialized() == ray_before  # no Ray connection made
    assert cfg.model.weights == "imagenet"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_driver_downloads_once_and_workers_read_its_copy(where, request, server, torch_home, tmp_path,
                                                          resnet_file, monkeypatch):
    root, base, gets = server
    data, ref = resnet_file
    url = _serve(root, base, data)
    monkeypatch.setattr(weights, "imagenet_url", lambda name: url)
    overrides = {"model": {"weights": "imagenet"}, "experiment": {"models": ["resnet18"]}}
    if where == "s3":
        overrides["storage"] = {"endpoint_url": request.getfixturevalue("s3_endpoint")}
        out = f"s3://thyro-test/weights-{tmp_path.name}"
    else:
        out = str(tmp_path / "out")
    cfg = load_config(None, [overrides])
    weights.resolve_weights(cfg, out)
    assert cfg.model.weights == f"{out}/weights/"
    copy = storage.read_bytes(f"{out}/weights/{os.path.basename(url)}")
    assert copy == data
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")  # workers: no network needed
    for _ in range(2):
        model = build_model("resnet18", cfg.model.weights)
        assert torch.equal(model.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert len(gets) == 1


def test_worker_rejects_a_damaged_copy(tmp_path, resnet_file, monkeypatch):
    data, _ = resnet_file
    name = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    monkeypatch.setattr(weights, "imagenet_url", lambda n: f"http://127.0.0.1:9/{name}")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / name).write_bytes(data[: len(data) // 2])  # a truncated copy
    with pytest.raises(WeightsError, match="damaged"):
        build_model("resnet18", f"{tmp_path}/weights/")


def test_non_imagenet_weights_are_left_alone(tmp_path):
    cfg = load_config(None, [{"model": {"weights": str(tmp_path / "w.pt")}}])
    weights.resolve_weights(cfg, str(tmp_path / "out"))
    assert cfg.model.weights == str(tmp_path / "w.pt") and not (tmp_path / "out").exists()
