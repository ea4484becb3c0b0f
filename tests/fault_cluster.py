"""Fault scenarios on a multi-node Ray cluster on this machine (run by tests/test_faults.py).

A head with no CPUs and two 1-CPU worker raylets (ray.cluster_utils.Cluster, as
Ray's own fault-tolerance tests use), so every trial, task and actor runs on a
worker node that can be taken away. Runs in its own process: ray.init is
process-global and pytest's session already holds the shared cluster.

    python tests/fault_cluster.py WORKDIR [scenario ...]   -> WORKDIR/results.json

Scenarios: experiment (node lost mid-trial), score (node lost mid-archive),
s3 (object storage outage mid-score), failing_trial (a trial that raises).
Each records what it measured; the test file asserts on it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

os.environ["RAY_AUTH_MODE"] = "disabled"
# Every raylet on 127.0.0.1: Ray otherwise "canonicalises" 127.0.0.1 to the host's
# address, where this machine's GCS does not listen (the single-machine mode Ray
# uses on macOS and Windows).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.pop("RAY_ADDRESS", None)  # never the pytest session's cluster
# AWS_MAX_ATTEMPTS: botocore gives up on an unreachable endpoint after 2 tries, not 5
# (about 8 s a read), so the outage scenario stays within the test's time budget.
for _k, _v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2"}.items():
    os.environ[_k] = _v

EXPERIMENT = {
    "name": "faults", "preprocess": {"image_size": 64},
    "train": {"epochs": 2, "batch_size": 8, "precision": "fp32"},
    "split": {"n_repeats": 2}, "eval": {"bootstrap": 0},
    "experiment": {"models": ["resnet18"], "splits": [0, 1], "cam_analysis": False},
    # 0.98: two trial drivers (0.01 CPU each) and one Train worker fit on one 1-CPU node
    "ray": {"cpus_per_worker": 0.98, "max_concurrent_trials": 2, "max_failures": 1},
}
SCORE = {"score": {"batch_size": 4, "cam_size": 16, "actors": 1, "cpus_per_actor": 0.5, "cpus_per_task": 0.5,
                   "chunk_size": 8, "overlays": False, "rows_per_file": 1}}
N_SCORE, N_S3 = 24, 16  # inputs: three chunks for the node loss (time to strike mid-archive), two for S3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """The cluster, and worker nodes to lose and to add."""

    def __init__(self, work: Path):
        from ray.cluster_utils import Cluster

        self.work = work
        self.temp = tempfile.mkdtemp(prefix="rayf", dir="/tmp")  # short: raylet socket paths
        # Ray notes the newest cluster's address under its temp dir: ours, not the machine's /tmp/ray
        os.environ["RAY_TMPDIR"] = self.temp
        os.makedirs(os.path.join(self.temp, "ray"), exist_ok=True)
        port = _free_port()
        # Ray Train's placement-group cleaner asks the state API with no address; with another Ray
        # instance on the machine (the session's cluster, other jobs) it cannot tell which one is
        # meant and the group leaks. Every process of this cluster inherits the address.
        os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "gcs_server_port": port, "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": _free_port(), "temp_dir": self.temp, "node_ip_address": "127.0.0.1"})
        self.add(), self.add()
        import ray

        ray.init(address=self.cluster.address, _node_ip_address="127.0.0.1", logging_level="ERROR")
        self.cluster.wait_for_nodes()

    def add(self):
        return self.cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", temp_dir=self.temp)

    def kill_node_of(self, class_name: str, ready=lambda: True, done=lambda: False, actor_wait: float = 240) -> dict:
        """Once `ready()`, SIGKILL the raylet, and every process, of the worker node that runs an alive
        `class_name` actor (looked for up to `actor_wait` s; else the first worker node, which runs
        the job's tasks too), and add a fresh node in its place (a replacement spot instance)."""
        from ray.util.state import list_actors

        seen: dict = {}
        stop = threading.Event()

        def watch():  # the state API answers in seconds under load: look from the start, not at the moment
            while not stop.is_set():
                try:
                    alive = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000,
                                                    raise_on_missing_output=False) if class_name in a.class_name]
                except Exception:  # a slow state API: ask again
                    alive = []
                if alive:
                    seen["node_id"] = alive[0].node_id
                time.sleep(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            deadline = time.time() + 300
            while not ready():
                if done() or time.time() > deadline:
                    raise TimeoutError(f"the job ended before the fault could be injected ({class_name})")
                time.sleep(0.05)
            deadline = time.time() + actor_wait
            while "node_id" not in seen and time.time() < deadline and not done():
                time.sleep(0.05)
            if done():
                raise TimeoutError(f"the job ended before the fault could be injected ({class_name})")
        finally:
            stop.set()
        node_id = seen.get("node_id")
        nodes = sorted(self.cluster.worker_nodes, key=lambda n: n.node_id != node_id)
        self.cluster.remove_node(nodes[0], allow_graceful=False)
        self.add()
        return {"killed_at": time.time(), "node_ran_actor": nodes[0].node_id == node_id}

    def leaked_placement_groups(self, remove: bool = True) -> list[dict]:
        """Placement groups still holding resources with no live actor in them (after every job ended).

        Ray Train 2.60 leaves the group of a worker group whose start failed during the
        node loss; it holds its CPUs for the life of the cluster. Recorded, then removed,
        so that the next scenario starts on a clean cluster as a fresh job would after
        an operator's cleanup."""
        from ray.util import placement_group_table
        from ray.util.placement_group import PlacementGroup, remove_placement_group
        from ray.util.state import list_actors

        live = {a.placement_group_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000,
                                                          raise_on_missing_output=False) if a.placement_group_id}
        leaked = []
        for pg_id, info in placement_group_table().items():
            if info["state"] == "CREATED" and pg_id not in live:
                leaked.append({"id": pg_id, "bundles": info["bundles"]})
                if remove:
                    remove_placement_group(PlacementGroup(ray_pg_id(pg_id)))
        return leaked

    def close(self):
        import ray

        ray.shutdown()
        self.cluster.shutdown()


def ray_pg_id(hex_id: str):
    from ray._raylet import PlacementGroupID

    return PlacementGroupID(bytes.fromhex(hex_id))


def _attempts(out: Path) -> dict[str, int]:
    """Tune's own count of each trial's runs: 1 + its failures (from the experiment state it saves)."""
    counts = {}
    for f in sorted((out / "ray" / "experiment").glob("experiment_state*.json")):
        for trial, meta in json.loads(f.read_text())["trial_data"]:
            t = json.loads(trial)
            c = t["config"].get("trial", t["config"])  # the ordered grid nests model/repeat under "trial"
            counts[f"{c['model']}/{c['repeat']}"] = json.loads(meta)["num_failures"] + (t["status"] != "ERROR")
    return counts


def _in_thread(fn):
    """Run fn() in a thread; returns (thread, box) with box['result'] or box['error']."""
    box: dict = {}

    def go():
        try:
            box["result"] = fn()
        except BaseException as e:  # recorded, the scenario decides
            box["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, box


def _cfg(*layers):
    from thyro.config import load_config

    return load_config(None, list(layers))


# --- scenarios ----------------------------------------------------------------------------------

def experiment(lab: Lab, ctx: dict) -> dict:
    """A worker node running a trial is lost mid-training; a replacement node joins."""
    from thyro.distributed.experiment import run_dir, run_experiment
    from thyro.model import checkpoint

    cfg = _cfg(EXPERIMENT, {"data": {"source": ctx["phantom"]}})
    clean = ctx["clean"]  # failing_trial's experiment, resumed without the fault

    out = lab.work / "exp_fault"
    t0 = time.time()
    th, box = _in_thread(lambda: run_experiment(cfg, str(out), log=lambda s: None))
    kill = lab.kill_node_of("RayTrainWorker", done=lambda: not th.is_alive())
    time.sleep(0.5)
    runs = {s: run_dir(str(out), "resnet18", s) for s in (0, 1)}
    complete_at_kill = [s for s, r in runs.items() if checkpoint.is_complete(r)]
    th.join(600)
    if "error" in box:
        raise box["error"]
    res = box["result"]
    cols = [c for c in clean.summary.columns if c.endswith(("_mean", "_sd", "_ci_low", "_ci_high"))]
    diff = (res.summary[cols] - clean.summary[cols]).abs().max().max()
    created = {s: checkpoint.load_card(r)["created"] for s, r in runs.items()}
    return {"seconds": time.time() - t0, "kill_after_s": kill["killed_at"] - t0,
            "complete_at_kill": complete_at_kill, "all_complete": all(checkpoint.is_complete(r) for r in runs.values()),
            "summary_max_abs_diff": float(diff), "n_summary_cols": len(cols),
            "trials": sorted(map(list, zip(res.trials.model, res.trials.split.astype(int)))), "created": created,
            "attempts": _attempts(out)}


def _run(ctx: dict) -> str:
    """A saved run to score: the clean experiment's, or one trained here (plain PyTorch) if it did not run."""
    if "run" not in ctx:
        from thyro.model.training import train_run

        cfg = _cfg(EXPERIMENT, {"data": {"source": ctx["phantom"]}, "train": {"epochs": 1}})
        ctx["run"] = str(Path(ctx["phantom"]).parent.parent / "run")
        train_run(cfg, ctx["run"], log=lambda s: None)
    return ctx["run"]


def _archive(ctx: dict, folder: Path, n: int) -> Path:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(ctx["phantom"])
    root = Path(ctx["phantom"]).parent
    for f in folder.glob("*.png"):
        f.unlink()
    for i in range(n):
        (folder / f"{i:03d}.png").write_bytes((root / df.path[i % len(df)]).read_bytes())
    return folder


def _rows(output: Path) -> list[dict]:
    import pyarrow.parquet as pq

    t = pq.read_table(str(output / "predictions"), columns=["row_id", "input_uri", "frame", "status", "error",
                                                                "prob_malignant"])
    return t.to_pylist()


def _plain_scores(cfg, run: str, folder: Path) -> list[dict]:
    """The same inputs scored without Ray, one at a time: thyro.model.scoring.prepare and the Predictor."""
    import numpy as np
    import torch

    from thyro.data.sources import Item
    from thyro.model.predictor import Predictor
    from thyro.model.scoring import prepare

    p = Predictor(run, cam_size=cfg.score.cam_size)
    s = cfg.score
    rows = []
    for f in sorted(folder.glob("*.png")):
        for r in prepare(Item(str(f)), p.preset, s.frames, s.hash_salt, s.skip_extensions):
            x = torch.from_numpy(np.asarray(r["pixels"], np.float32)[None])
            rows.append({"row_id": r["row_id"], "input_uri": r["input_uri"], "frame": r["frame"], "status": r["status"],
                         "prob_malignant": float(p.predict_tensor(x).prob_malignant[0])})
    return rows


def score(lab: Lab, ctx: dict) -> dict:
    """A worker node running the predictor actor is lost mid-archive; a replacement node joins."""
    from thyro.distributed.score import run_score

    src = _archive(ctx, lab.work / "archive", N_SCORE)
    _run(ctx)
    cfg = _cfg(SCORE)
    t0 = time.time()
    clean = _plain_scores(cfg, ctx["run"], src)
    clean_s = time.time() - t0
    out = lab.work / "score_fault"
    t0 = time.time()
    th, box = _in_thread(lambda: run_score(cfg, ctx["run"], str(src), str(out), log=lambda s: None))
    pred = out / "predictions"
    # the first rows are on disk: mid-archive; the predictor actor's node if it is found within 3 s
    kill = lab.kill_node_of("MapWorker", ready=lambda: pred.exists() and any(pred.glob("*.parquet")),
                            done=lambda: not th.is_alive(), actor_wait=3)
    files_at_kill = len(list(pred.glob("*.parquet")))
    th.join(600)
    if "error" in box:
        raise box["error"]
    return {"clean_seconds": clean_s, "seconds": time.time() - t0, "kill_after_s": kill["killed_at"] - t0,
            "files_at_kill": files_at_kill, "inputs": N_SCORE, "node_ran_actor": kill["node_ran_actor"],
            "clean": clean, "fault": _rows(out), "counts": box["result"].counts}


def s3(lab: Lab, ctx: dict) -> dict:
    """The S3 endpoint (moto) holding the archive stops mid-score; started again on the same port."""
    import boto3
    from moto.server import ThreadedMotoServer

    from thyro.distributed.score import run_score

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    src = _archive(ctx, lab.work / "archive_s3", N_S3)

    def start():
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket="faults")  # moto's state does not survive a stop: put the archive back
        for f in sorted(src.glob("*.png")):
            client.put_object(Bucket="faults", Key=f"archive/{f.name}", Body=f.read_bytes())
        return server

    server = start()
    _run(ctx)
    cfg = _cfg(SCORE, {"storage": {"endpoint_url": url}})
    out = lab.work / "score_s3"
    pred = out / "predictions"
    t0 = time.time()
    th, box = _in_thread(lambda: run_score(cfg, ctx["run"], "s3://faults/archive", str(out), log=lambda s: None))
    while not (pred.exists() and any(pred.glob("*.parquet"))) and th.is_alive():
        time.sleep(0.1)
    server.stop()
    stopped_after = time.time() - t0
    th.join(300)
    outcome = {"outage_after_s": stopped_after, "first_run_s": time.time() - t0, "first_run_hung": th.is_alive(),
               "first_run_error": None if "error" not in box else f"{type(box['error']).__name__}: {box['error']}"[:3000],
               "first_run_counts": box["result"].counts if "result" in box else None,
               "rows_after_outage": _rows(out) if pred.exists() else []}
    server = start()
    t1 = time.time()
    try:
        res = run_score(cfg, ctx["run"], "s3://faults/archive", str(out), log=lambda s: None)
        outcome["rerun_counts"] = res.counts
    finally:
        server.stop()
    outcome.update({"rerun_s": time.time() - t1, "rows": _rows(out), "endpoint": url, "inputs": N_S3,
                    "quarantined": sorted(p.name for p in (out / "_incomplete").glob("*")) if (out / "_incomplete").exists() else []})
    return outcome


def failing_trial(lab: Lab, ctx: dict) -> dict:
    """One trial's worker raises on every attempt; the other must finish and be summarised."""
    import pandas as pd

    from thyro.distributed.experiment import FAIL_TRIAL_ENV, ExperimentIncomplete, run_experiment

    cfg = _cfg(EXPERIMENT, {"data": {"source": ctx["phantom"]}})
    out = lab.work / "exp_failing"
    os.environ[FAIL_TRIAL_ENV] = "resnet18/1"
    t0 = time.time()
    try:
        run_experiment(cfg, str(out), log=lambda s: None)
        err, res = None, None
    except ExperimentIncomplete as e:
        err, res = str(e), e.result
    finally:
        os.environ.pop(FAIL_TRIAL_ENV)
    seconds = time.time() - t0
    trials = pd.read_parquet(out / "trials.parquet")
    summary = pd.read_csv(out / "summary.csv").to_dict("records")
    report = (out / "report.html").read_text()
    attempts = _attempts(out)
    from thyro.distributed.experiment import run_dir
    from thyro.model import checkpoint

    first_card = checkpoint.load_card(run_dir(str(out), "resnet18", 0))["created"]
    t1 = time.time()
    clean = run_experiment(cfg, str(out), log=lambda s: None)  # the same command again, fault gone
    ctx["clean"], ctx["run"] = clean, run_dir(clean.out, "resnet18", 0)
    return {"seconds": seconds, "error": err, "failed": None if res is None else res.failed.to_dict("records"),
            "trials": trials[["model", "split", "status", "error", "auc"]].to_dict("records"),
            "summary": summary, "report": report, "attempts": attempts, "resume_seconds": time.time() - t1,
            "resumed_trials": sorted(map(list, zip(clean.trials.model, clean.trials.split.astype(int)))),
            "resumed_failed": len(clean.failed), "split0_redone": checkpoint.load_card(ctx["run"])["created"] != first_card,
            "resumed_auc": {int(s): float(a) for s, a in zip(clean.trials.split, clean.trials.auc)}}


# failing_trial first: its resumed experiment is the clean reference and the saved run the others use
SCENARIOS = {"failing_trial": failing_trial, "experiment": experiment, "score": score, "s3": s3}


def main(work: str, names: list[str]) -> int:
    from thyro.data import phantom

    work_p = Path(work)
    work_p.mkdir(parents=True, exist_ok=True)
    ctx = {"phantom": str(phantom.generate(work_p / "phantom", n_benign=16, n_malignant=8, size=64, seed=3))}
    t0 = time.time()
    lab = Lab(work_p)
    results: dict = {"cluster_start_s": time.time() - t0}
    try:
        for name in names or list(SCENARIOS):
            t = time.time()
            try:
                results[name] = SCENARIOS[name](lab, ctx)
            except BaseException:
                results[name] = {"crashed": traceback.format_exc()[-4000:]}
            results[name]["wall_s"] = time.time() - t
            time.sleep(2)  # let Train's placement-group cleaners act before looking for leaks
            results[name]["leaked_placement_groups"] = lab.leaked_placement_groups()
            (work_p / "results.json").write_text(json.dumps(results, default=str))
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
