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


# --- token auth and closed ports (ShadowRay, CVE-2023-48022) -------------------------

def _ray_containers(doc: dict) -> list[tuple[str, dict]]:
    """(where, container) for every Ray pod of a RayCluster / RayJob, and a RayJob's submitter."""
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    templates = [("head", spec["headGroupSpec"]["template"])]
    templates += [(g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]]
    if doc["kind"] == "RayJob":
        assert "submitterPodTemplate" in doc["spec"], "the RayJob submitter needs the token too"
        templates.append(("submitter", doc["spec"]["submitterPodTemplate"]))
    return [(w, c) for w, t in templates for c in _containers(t)]


def kuberay_auth_problems(doc: dict) -> list[str]:
    problems = []
    for where, c in _ray_containers(doc):
        env = {e["name"]: e for e in c.get("env", [])}
        if env.get("RAY_AUTH_MODE", {}).get("value") != "token":
            problems.append(f"{where}: no RAY_AUTH_MODE=token")
        tok = env.get("RAY_AUTH_TOKEN", {})
        if "value" in tok or "secretKeyRef" not in tok.get("valueFrom", {}):
            problems.append(f"{where}: RAY_AUTH_TOKEN must come from a Secret (valueFrom.secretKeyRef)")
    return problems


def launcher_auth_problems(cfg: dict) -> list[str]:
    problems = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in cfg[key]:
            if "ray start" in cmd and "RAY_AUTH_MODE=token" not in cmd:
                problems.append(f"{key}: `{cmd}` starts Ray without RAY_AUTH_MODE=token")
    if "~/.ray/auth_token" not in cfg.get("file_mounts", {}):
        problems.append("file_mounts: no ~/.ray/auth_token for the nodes")
    return problems


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_every_ray_pod_runs_with_token_auth(path):
    doc = yaml.safe_load(path.read_text())
    assert kuberay_auth_problems(doc) == []
    head = (doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"])["headGroupSpec"]
    assert "serviceType" not in head, f"{path.name}: the head stays a ClusterIP Service (port-forward to reach it)"


def test_launcher_starts_every_node_with_token_auth():
    assert launcher_auth_problems(_launcher()) == []


def test_auth_checks_catch_a_cluster_without_token():
    """The checks above fail on what they guard against: token auth dropped, token inlined."""
    doc = yaml.safe_load((REPO / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    head = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["env"] = [{"name": "RAY_AUTH_TOKEN", "value": "x"}]
    assert kuberay_auth_problems(doc) == ["head: no RAY_AUTH_MODE=token",
                                          "head: RAY_AUTH_TOKEN must come from a Secret (valueFrom.secretKeyRef)"]
    cfg = _launcher()
    cfg["head_start_ray_commands"] = [c.replace("RAY_AUTH_MODE=token ", "") for c in cfg["head_start_ray_commands"]]
    assert len(launcher_auth_problems(cfg)) == 1


def test_dashboard_on_all_interfaces_only_with_token_auth():
    for path in KUBERAY:
        doc = yaml.safe_load(path.read_text())
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        if spec["headGroupSpec"]["rayStartParams"].get("dashboard-host") == "0.0.0.0":
            assert not [p for p in kuberay_auth_problems(doc) if p.startswith("head")], path.name
    for cmd in _launcher()["head_start_ray_commands"]:
        if "--dashboard-host=0.0.0.0" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd
    docker = (REPO / "cluster" / "Dockerfile").read_text()
    assert re.search(r"^ENV RAY_AUTH_MODE=token$", docker, re.M)  # any Ray started in the image


def test_no_token_literal_in_cluster_files():
    literal = re.compile(r"\b[0-9a-f]{32,}\b"                                  # a generated token
                         r"|RAY_AUTH_TOKEN\s*[=:]\s*[\"']?[A-Za-z0-9]"         # RAY_AUTH_TOKEN=abc / : abc
                         r"|auth_token\s*=\s*[\"']?[A-Za-z0-9]", re.I)         # --from-literal=auth_token=abc
    files = [f for f in (REPO / "cluster").rglob("*") if f.is_file()]
    for f in files:
        assert not literal.search(f.read_text()), f"{f}: looks like an auth token"
    assert literal.search("--from-literal=auth_token=" + "ab12" * 8) and literal.search("RAY_AUTH_TOKEN: s3cr3t")
    for f in files:
        if f.suffix == ".yaml":
            for doc in yaml.safe_load_all(f.read_text()):
                for _, c in (_ray_containers(doc) if doc.get("kind") in {"RayCluster", "RayJob"} else []):
                    assert all("value" not in e for e in c.get("env", []) if e["name"] == "RAY_AUTH_TOKEN")


def test_networkpolicy_admits_only_ray_pods_submitters_and_the_operator():
    doc = yaml.safe_load((REPO / "cluster" / "kuberay" / "networkpolicy.yaml").read_text())
    assert doc["apiVersion"] == "networking.k8s.io/v1" and doc["kind"] == "NetworkPolicy"
    spec = doc["spec"]
    assert "Ingress" in spec["policyTypes"]
    assert {"key": "ray.io/cluster", "operator": "Exists"} in spec["podSelector"]["matchExpressions"]
    for rule in spec["ingress"]:
        assert rule.get("from"), "a rule without `from` admits everyone"
        for peer in rule["from"]:
            assert "ipBlock" not in peer and peer.get("podSelector"), f"peer {peer} is not a pod selector"
    open_to_non_ray = [r for r in spec["ingress"]
                       if not all(p.get("podSelector", {}).get("matchExpressions") == [
                           {"key": "ray.io/cluster", "operator": "Exists"}] and "namespaceSelector" not in p
                                  for p in r["from"])]
    assert all([p.get("port") for p in r.get("ports", [])] == [8265] for r in open_to_non_ray)
    submitter_labels = {k: v for p in KUBERAY if "rayjob" in p.name
                        for k, v in yaml.safe_load(p.read_text())["spec"]["submitterPodTemplate"]["metadata"]["labels"].items()}
    admitted = [p["podSelector"].get("matchLabels", {}) for r in open_to_non_ray for p in r["from"]]
    assert submitter_labels.items() <= {k: v for m in admitted for k, v in m.items()}.items()
