"""benchmarks/gpu_check.py must run unchanged the day a GPU is lent: its CPU dry run, tiny."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_reports_both_decode_paths(tiny_run, ray_cluster, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ray_cluster, "RAY_AUTH_MODE": "disabled"}
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--model", tiny_run,
                          "--n", "24", "--size", "64", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads(line.split(" ", 1)[1]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 2 and all(r["b"] > 0 and r["a"] > 0 for r in results)
    assert "decode on cpu:" in out.stdout and "decode on actor:" in out.stdout


def test_gpu_check_without_ray_dry_run_scores_both_paths_and_agrees_with_the_cpu_reference(tiny_run, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--no-ray", "--model", tiny_run,
                          "--n", "16", "--size", "64", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "decoded on the cpu:" in out.stdout and "decoded on the actor:" in out.stdout
    # the actor path's stage table times the actor on JPEG bytes, not on squares decoded beforehand
    assert out.stdout.count("read + hash + header (to actor)") == 1
    agreement = [json.loads(line.split(" ", 1)[1]) for line in out.stdout.splitlines() if line.startswith("AGREEMENT ")]
    # on CPU the fp32 setting is the reference itself: identical; bf16 and the other decoder move p a little
    assert [a["setting"] for a in agreement] == ["cpu fp32, PIL decode", "cpu bf16, PIL decode",
                                                 "cpu bf16, JPEG decoded on the actor"]
    assert agreement[0]["max_dp"] == 0 and agreement[0]["label_flips"] == 0
    assert not agreement[0]["max_d_cam_in_field"] > 0  # 0, or NaN where every map is all zero
    assert all(a["ok"] for a in agreement)
