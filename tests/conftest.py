import os

import pytest

# Tests must never reach for the network or a GPU, and 2 cores are shared.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory):
    """A small phantom shared by the tests that only read it."""
    from thyro.data import phantom

    out = tmp_path_factory.mktemp("phantom")
    manifest = phantom.generate(out, n_benign=24, n_malignant=12, size=96, seed=3,
                                multi_image_fraction=0.3)
    return manifest


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint on 127.0.0.1 (moto's server), as s3fs's own tests use."""
    from moto.server import ThreadedMotoServer

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ[k] = v
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="thyro-test")
    yield url
    server.stop()


_DASHBOARD: dict[str, str] = {}


@pytest.fixture(scope="session")
def ray_dashboard(ray_cluster) -> str:
    """The shared head's dashboard (job server) URL, on 127.0.0.1."""
    return _DASHBOARD["url"]


@pytest.fixture(scope="session")
def tiny_run(tiny_phantom, tmp_path_factory):
    """A saved run (one epoch, 64 px) for the score tests."""
    from thyro.config import load_config
    from thyro.model.training import train_run

    out = tmp_path_factory.mktemp("scorerun")
    cfg = load_config(None, [{"data": {"source": str(tiny_phantom)}, "preprocess": {"image_size": 64},
                              "train": {"epochs": 1, "batch_size": 8}, "eval": {"bootstrap": 0}}])
    train_run(cfg, str(out), log=lambda s: None)
    return str(out)


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint, tmp_path_factory):
    """One local Ray head shared by every Ray test (started once: it costs seconds).

    Token auth is set explicitly (Ray 2.60 otherwise picks it up from a stray
    ~/.ray/auth_token). The dashboard must run: Ray Train's placement-group
    cleanup asks its state API, and without it finished trials keep their CPUs.
    Stopped with SIGINT, which ends this cluster only.
    """
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    port, dashboard_port = _free_port(), _free_port()
    temp = tmp_path_factory.mktemp("ray")
    ray_bin = str(Path(sys.executable).parent / "ray")
    proc = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={dashboard_port}", "--disable-usage-stats",
                             f"--temp-dir={temp}", "--node-ip-address=127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            # as on a real node with thyro's environment active: jobs run `python`
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    address = f"127.0.0.1:{port}"
    for _ in range(120):
        try:
            ray.init(address=address, logging_level="ERROR")
            break
        except Exception:
            time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError("local Ray head did not start")
    os.environ["RAY_ADDRESS"] = address
    _DASHBOARD["url"] = f"http://127.0.0.1:{dashboard_port}"
    yield address
    ray.shutdown()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
