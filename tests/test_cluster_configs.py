"""cluster/: the launcher YAML passes Ray's own validation; the KubeRay manifests carry
what a RayCluster / RayJob needs (structural: no PyPI package ships KubeRay's CRD schema)."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from thyro.config import load_config, parse_override

REPO = Path(__file__).resolve().parents[1]
KUBERAY = sorted((REPO / "cluster" / "kuberay").glob("ray*.yaml"))
LAUNCHER = REPO / "cluster" / "aws" / "thyro-gpu.yaml"
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def _launcher():
    return yaml.safe_load(LAUNCHER.read_text())


def test_launcher_yaml_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(_launcher())
    validate_config(cfg)
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p")) and gpu["max_workers"] >= 1
    assert any("requirements.lock" in c for c in cfg["setup_commands"])


def test_launcher_validation_rejects_a_broken_node_type():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _launcher()
    cfg["available_node_types"]["gpu_worker"]["max_workers"] = "four"
    with pytest.raises(Exception, match="four"):
        validate_config(prepare_config(cfg))


def _containers(template: dict) -> list[dict]:
    containers = template["spec"]["containers"]
    assert containers, "a pod template needs a container"
    return containers


def _check_cluster_spec(spec: dict, name: str) -> None:
    import ray

    assert spec["rayVersion"] == ray.__version__, f"{name}: rayVersion must match the image's Ray"
    head = spec["headGroupSpec"]
    assert isinstance(head.get("rayStartParams", {}), dict)
    groups = spec["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    images = set()
    for where, template in [("head", head["template"]), *((g["groupName"], g["template"]) for g in groups)]:
        for c in _containers(template):
            images.add(c["image"])
            res = c["resources"]
            for kind in ("requests", "limits"):
                for key, q in res[kind].items():
                    assert QUANTITY.match(str(q)), f"{name} {where}: {kind}.{key}={q!r} is no Kubernetes quantity"
            assert res["limits"].get("nvidia.com/gpu") == res["requests"].get("nvidia.com/gpu")
    for g in groups:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{name}: {g['groupName']} replicas"
    gpu = [g for g in groups if any("nvidia.com/gpu" in c["resources"]["limits"] for c in _containers(g["template"]))]
    assert gpu, f"{name}: a GPU worker group with nvidia.com/gpu limits"
    assert len(images) == 1, f"{name}: one image (cluster/Dockerfile) for every pod, got {images}"


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_structure(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in {"RayCluster", "RayJob"}
    if doc["kind"] == "RayCluster":
        _check_cluster_spec(doc["spec"], path.name)
        assert doc["spec"]["enableInTreeAutoscaling"] is True
        return
    spec = doc["spec"]
    _check_cluster_spec(spec["rayClusterSpec"], path.name)
    assert spec["shutdownAfterJobFinishes"] is True
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == "/app"  # cluster/Dockerfile's WORKDIR


@pytest.mark.parametrize("path", [p for p in KUBERAY if "rayjob" in p.name], ids=lambda p: p.name)
def test_rayjob_entrypoint_runs_a_jobs_module_with_a_valid_config(path):
    argv = shlex.split(yaml.safe_load(path.read_text())["spec"]["entrypoint"])
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("jobs.")
    assert (REPO / (argv[2].replace(".", "/") + ".py")).is_file()
    config = argv[argv.index("--config") + 1]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    load_config(REPO / config, [parse_override(s) for s in sets])  # unknown keys / wrong types raise


def test_no_credentials_in_cluster_files():
    secret = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]|AWS_SECRET_ACCESS_KEY\s*[:=]\s*\S", re.I)
    for f in (REPO / "cluster").rglob("*"):
        if f.is_file():
            text = "\n".join(line for line in f.read_text().splitlines() if not line.lstrip().startswith("#"))
            assert not secret.search(text), f"{f}: looks like a credential"


def test_image_installs_the_same_pins_as_ci():
    docker = (REPO / "cluster" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", docker, re.M) and "pip install -r requirements.lock" in docker
    assert "WORKDIR /app" in docker
    lock = (REPO / "requirements.lock").read_text()
    import ray

    assert f"ray[default,data,train,tune]=={ray.__version__}" in lock


def test_gpu_configs_pack_trials_and_put_scoring_on_gpus():
    paper = load_config(REPO / "configs" / "paper.yaml")
    assert paper.ray.use_gpu and 0 < paper.ray.gpus_per_worker < 1  # several trials share one GPU
    score = load_config(REPO / "configs" / "score-gpu.yaml").score
    assert score.gpus_per_actor > 0 and score.device == "cuda" and score.precision == "bf16"
