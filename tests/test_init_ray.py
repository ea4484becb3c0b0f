"""`init_ray` hands the job's workers its settings whether it starts the cluster or joins one."""

import json
import os
import subprocess
import sys

import pytest

from thyro.distributed.common import _starts_own_cluster

CHECK = """
import json, os
from thyro.config import load_config
from thyro.distributed.common import init_ray
import ray

init_ray(load_config(None, [{"storage": {"endpoint_url": "http://127.0.0.1:9"}}]))

@ray.remote(num_cpus=0)
def seen():
    return {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
                                           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")}

print(json.dumps({"job_env": dict(ray.get_runtime_context().runtime_env), "worker": ray.get(seen.remote())}))
ray.shutdown()
"""


def test_joining_a_cluster_by_address_is_not_starting_one(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not _starts_own_cluster("127.0.0.1:6379")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert not _starts_own_cluster(None)


@pytest.mark.ray
def test_a_cluster_the_job_starts_gives_its_workers_the_env_without_a_runtime_env(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_TMPDIR=str(tmp_path_factory.mktemp("rt")))  # its own temp dir: no `ray start` cluster to find
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["job_env"] == {}  # the started-here path: workers inherit, none are started for an env
    interval = env.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # ray_env's default unless set
    watcher = env.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")  # off on a one-node cluster of the job's own
    assert got["worker"] == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": interval,
                             "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": watcher}
