"""A cluster that loses nodes: fault scenarios on a multi-node Ray cluster on this machine.

tests/fault_cluster.py runs every scenario in one subprocess, on one cluster of
a head and worker raylets (ray.init is process-global; the session's shared
cluster stays untouched), and writes what it measured; each test checks one
invariant of it against the clean run of the same job.
"""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

SCRIPT = Path(__file__).with_name("fault_cluster.py")


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    root = SCRIPT.parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    with open(work / "log.txt", "w") as log:
        proc = subprocess.run([sys.executable, str(SCRIPT), str(work)], stdout=log, stderr=subprocess.STDOUT,
                              env=env, timeout=900)
    results = json.loads((work / "results.json").read_text()) if (work / "results.json").exists() else {}
    assert proc.returncode == 0 and results, (work / "log.txt").read_text()[-5000:]
    _print_table(results)
    return results


def _scenario(faults, name):
    r = faults[name]
    assert "crashed" not in r, r.get("crashed")
    return r


def _print_table(r: dict) -> None:
    def lost(name, fn):
        v = r.get(name, {})
        if "crashed" in v:
            return "scenario crashed"
        try:
            return fn(v)
        except Exception as e:  # the table is informative; the tests below decide
            return f"? ({type(e).__name__})"

    def rows_lost(v, key="fault"):
        want, got = Counter(x["input_uri"] for x in v["clean"]), Counter(x["input_uri"] for x in v[key])
        return f"{sum((want - got).values())} rows lost, {sum((got - want).values())} duplicated"

    def s3_lost(v):
        c = Counter(x["input_uri"] for x in v["rows"])
        return (f"{v['inputs'] - len(c)} inputs lost, {sum(n - 1 for n in c.values())} duplicated, "
                f"{sum(x['status'] != 'ok' for x in v['rows'])} error rows")

    table = [
        ("worker node lost mid-trial (experiment)",
         lost("experiment", lambda v: f"{2 - len(v['trials'])} trials lost; summary max |diff| "
                                      f"{v['summary_max_abs_diff']:.2g}")),
        ("worker node lost mid-archive (score)", lost("score", rows_lost)),
        ("S3 endpoint stopped mid-score, rerun", lost("s3", s3_lost)),
        ("one trial raises on every attempt",
         lost("failing_trial", lambda v: f"{len(v['failed'] or [])} failed trial recorded, others complete")),
    ]
    print(f"\nfault injected | what was lost | wall time (cluster start {r.get('cluster_start_s', 0):.0f}s)")
    for (name, what), key in zip(table, ("experiment", "score", "s3", "failing_trial")):
        print(f"{name} | {what} | {r.get(key, {}).get('wall_s', float('nan')):.0f}s")


def test_node_lost_mid_trial_experiment_completes_every_trial(faults):
    r = _scenario(faults, "experiment")
    assert len(r["complete_at_kill"]) < 2  # the node went while a trial was still running
    assert r["all_complete"] and r["trials"] == [["resnet18", 0], ["resnet18", 1]]
    # Tune's own count: the trial on the lost node ran twice, the other once
    assert sorted(r["attempts"].values()) == [1, 2]


def test_node_lost_mid_trial_summary_equals_the_clean_run(faults):
    r = _scenario(faults, "experiment")
    assert r["n_summary_cols"] > 20 and r["summary_max_abs_diff"] <= 1e-6


def test_node_lost_mid_archive_scores_every_input_exactly_once(faults):
    r = _scenario(faults, "score")
    assert r["files_at_kill"] >= 1  # killed mid-archive, after rows were already written
    uris = Counter(x["input_uri"] for x in r["fault"])
    assert len(uris) == r["inputs"] and set(uris.values()) == {1}


def test_node_lost_mid_archive_rows_equal_the_clean_run(faults):
    r = _scenario(faults, "score")
    clean = {x["row_id"]: x for x in r["clean"]}
    fault = {x["row_id"]: x for x in r["fault"]}
    assert fault.keys() == clean.keys() and len(clean) == r["inputs"]
    assert all(abs(fault[k]["prob_malignant"] - clean[k]["prob_malignant"]) <= 1e-4 for k in clean)


def test_s3_outage_first_run_ends_in_bounded_time_naming_the_endpoint(faults):
    r = _scenario(faults, "s3")
    assert not r["first_run_hung"]
    host = r["endpoint"].split("//")[1]
    # the job stops (an unreachable endpoint is no fault of the input: no error row marks it done),
    # and its error says which endpoint
    assert r["first_run_error"] is not None and host in r["first_run_error"], r["first_run_error"]
    assert all(x["status"] == "ok" for x in r["rows_after_outage"])


def test_s3_outage_rerun_scores_every_input_exactly_once(faults):
    r = _scenario(faults, "s3")
    uris = Counter(x["input_uri"] for x in r["rows"])
    assert len(uris) == r["inputs"] and set(uris.values()) == {1}
    assert all(x["status"] == "ok" for x in r["rows"])


def test_s3_outage_rerun_gives_every_input_one_real_result(faults):
    r = _scenario(faults, "s3")
    ok = Counter(x["input_uri"] for x in r["rows"] if x["status"] == "ok")
    assert len(ok) == r["inputs"] and set(ok.values()) == {1}  # every input has exactly one real result


def test_failing_trial_is_recorded_and_the_others_summarised(faults):
    r = _scenario(faults, "failing_trial")
    assert "experiment incomplete: 1 of 2" in r["error"]
    assert [(f["model"], f["split"]) for f in r["failed"]] == [("resnet18", 1)]
    assert "injected failure" in r["failed"][0]["error"]
    by_split = {t["split"]: t for t in r["trials"]}
    assert by_split[0]["status"] == "complete" and by_split[1]["status"] == "failed"
    assert "injected failure" in by_split[1]["error"]
    (row,) = r["summary"]
    assert row["n_splits"] == 1 and row["n_failed"] == 1 and "injected failure" in row["failed"]
    assert "Failed trials" in r["report"] and "injected failure" in r["report"]


def test_failing_trial_is_retried_max_failures_times(faults):
    r = _scenario(faults, "failing_trial")
    assert r["attempts"] == {"resnet18/0": 1, "resnet18/1": 2}  # ray.max_failures = 1: one retry


def test_rerun_without_the_fault_retries_only_the_failed_trial(faults):
    r = _scenario(faults, "failing_trial")
    assert r["resumed_trials"] == [["resnet18", 0], ["resnet18", 1]] and r["resumed_failed"] == 0
    assert not r["split0_redone"]  # the finished trial was not trained again
    assert r["resumed_auc"]["0"] == pytest.approx({t["split"]: t for t in r["trials"]}[0]["auc"], abs=1e-12)
