"""`thyro pretrain` through Ray on the shared local cluster: a tiny run, and a real kill + resume."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from thyro.config import load_config
from thyro.model.models import build_model

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
TINY = {"pretrain": {"epochs": 1, "batch_size": 4, "image_size": 32, "proj_dim": 64, "pred_dim": 16,
                     "checkpoint_every_steps": 1, "precision": "fp32", "channels_last": False},
        "ray": {"num_workers": 1, "cpus_per_worker": 1}, "score": {"cpus_per_task": 0.5}}


def _archive(tiny_phantom, folder: Path, n: int) -> dict[str, bytes]:
    """n phantom images, one of them also under a second name, and a truncated PNG."""
    df = pd.read_csv(tiny_phantom)
    files = {f"p{i:02d}.png": (tiny_phantom.parent / p).read_bytes() for i, p in enumerate(df.path[:n])}
    files["copy_of_p00.png"] = files["p00.png"]
    files["broken.png"] = files["p01.png"][:50]
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_two_steps_write_a_loadable_backbone_counting_distinct_images(ray_cluster, tiny_phantom, tmp_path):
    from thyro.distributed.pretrain import run_pretrain

    src, out = tmp_path / "archive", tmp_path / "run"
    src.mkdir()
    files = _archive(tiny_phantom, src, 8)
    good = {k: v for k, v in files.items() if k != "broken.png"}  # 9 images: 8 + the copy
    res = run_pretrain(load_config(None, [TINY]), str(src), str(out), log=lambda s: None)

    assert res.steps == 2 == 9 // 4  # one epoch of full batches of 4
    card = json.loads((out / "metadata.json").read_text())
    assert card["data"]["distinct_images"] == len({hashlib.sha256(v).hexdigest() for v in good.values()}) == 8
    assert card["data"]["images"] == 9 and card["method"] == "simsiam" and card["training"]["steps"] == 2
    saved = torch.load(out / "backbone.pt", weights_only=True)
    model = build_model("resnet18", weights=str(out))
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in saved.items())  # every trunk tensor is the pretrained one
    errors = pq.read_table(out / "errors").to_pandas()
    assert list(errors.input_uri) == [str(src / "broken.png")] and list(errors.status) == ["error"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["error"] == 1 and summary["images_per_s"] > 0


def _registered_step(out: Path) -> int | None:
    """The step of the latest checkpoint Ray Train has registered (its snapshot: what a restore reads)."""
    try:
        snap = json.loads((out / "ray" / "pretrain" / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not there yet, or being written
        return None
    latest = snap.get("latest_checkpoint_result")
    return int(latest["metrics"]["step"]) if latest else None


def test_killed_pretrain_resumes_from_its_last_checkpoint(ray_cluster, tiny_phantom, tmp_path):
    src, out = tmp_path / "archive", tmp_path / "run"
    src.mkdir()
    _archive(tiny_phantom, src, 12)  # 13 images: 3 steps of 4 an epoch
    cmd = [sys.executable, "-m", "jobs.pretrain", "--input", str(src), "--out", str(out),
           "--set", "pretrain.epochs=3", "--set", "pretrain.checkpoint_every_steps=2"]
    for k, v in TINY["pretrain"].items():
        if k not in ("epochs", "checkpoint_every_steps"):
            cmd += ["--set", f"pretrain.{k}={str(v).lower() if isinstance(v, bool) else v}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ray_cluster, "RAY_AUTH_MODE": "disabled"}
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _registered_step(out) is None and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert first.poll() is None, "the first run ended before its first checkpoint"
    first.send_signal(signal.SIGKILL)  # a real crash: no cleanup in the driver
    first.wait(30)
    at_kill = _registered_step(out)
    assert at_kill is not None and 0 < at_kill < 9 and not (out / "metadata.json").exists()

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    # continued from a checkpoint the killed run wrote, not from 0, and ran exactly the plan
    assert summary["resumed_from_step"] == at_kill
    assert summary["steps"] == summary["planned_steps"] == 3 * 3
    assert json.loads((out / "metadata.json").read_text())["training"]["steps"] == 9
