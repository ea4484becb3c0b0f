"""A job resumes in an output folder only with the config its results were made with (thyro.resume_guard).

Oracle: hand-written configs whose differences are known by construction. The jobs' own
checks run in a subprocess whose `import ray` fails, so a check that came after any Ray
work would show as an ImportError instead of the refusal, and could start no cluster.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from thyro.config import Config, config_to_dict, config_to_yaml, load_config
from thyro.data import storage
from thyro.resume_guard import (JOB_SECTIONS, OPERATIONAL, ConfigChange, ResumeConfigError, changes_results,
                                check_resume, config_changes, flatten, prepare_output)

# A run's saved config, written by hand: every value here differs from the library default.
SAVED = """\
name: study-a
train:
  lr: 1.0e-4
  epochs: 3
  threads: 1
split:
  seed: 0
  dev_fraction: 0.2
ray:
  max_concurrent_trials: 2
"""


def _saved(folder: Path, text: str = SAVED) -> Config:
    """`folder` as a run left it: its config.yaml is the resolved config of `text`."""
    cfg_file = folder.parent / f"{folder.name}-given.yaml"
    cfg_file.write_text(text)
    cfg = load_config(cfg_file)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(config_to_yaml(cfg))
    return cfg


def _with(cfg: Config, **dotted) -> Config:
    d = config_to_dict(cfg)
    for key, value in dotted.items():
        section, leaf = key.split("__")
        d[section][leaf] = value
    return Config.model_validate(d)


def test_config_changes_lists_every_differing_dotted_key_with_both_values():
    saved = {"train": {"lr": 1e-4, "epochs": 3}, "experiment": {"models": ["resnet18", "vgg16"]}, "name": "a"}
    new = {"train": {"lr": 3e-4, "epochs": 3}, "experiment": {"models": ["resnet18"]}, "name": "a",
           "extra": {"k": 1}}
    assert config_changes(saved, new) == [ConfigChange("train.lr", 1e-4, 3e-4),
                                          ConfigChange("experiment.models", ["resnet18", "vgg16"], ["resnet18"]),
                                          ConfigChange("extra.k", "<absent>", 1)]
    assert str(ConfigChange("train.lr", 1e-4, 3e-4)) == "train.lr: 0.0001 -> 0.0003"


def test_every_listed_key_is_a_key_of_the_config():
    keys = set(flatten(config_to_dict(Config())))
    assert set(OPERATIONAL) <= keys
    listed = [r for read in JOB_SECTIONS.values() if read for r in read]
    assert all(r in keys or any(k.startswith(r + ".") for k in keys) for r in listed)


def test_a_folder_without_a_saved_config_is_a_new_run_and_nothing_is_written(tmp_path):
    out = tmp_path / "new"
    assert check_resume(Config(), str(out), "experiment", log=lambda s: None) is False
    assert not out.exists()


def test_the_same_config_resumes_silently(tmp_path):
    cfg = _saved(tmp_path / "out")
    lines = []
    assert check_resume(cfg, str(tmp_path / "out"), "experiment", log=lines.append) is True
    assert lines == []


def test_a_results_key_change_is_refused_naming_folder_keys_and_the_way_out(tmp_path):
    out = tmp_path / "out"
    cfg = _saved(out)
    before = (out / "config.yaml").read_bytes()
    with pytest.raises(ResumeConfigError) as e:
        check_resume(_with(cfg, train__lr=3e-4, split__seed=1), str(out), "experiment")
    msg = str(e.value)
    assert "\n" not in msg
    assert str(out) in msg
    assert "train.lr: 0.0001 -> 0.0003" in msg and "split.seed: 0 -> 1" in msg
    assert f"--config {out}/config.yaml" in msg and "new --out" in msg
    assert (out / "config.yaml").read_bytes() == before


def test_operational_changes_resume_and_are_logged(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)  # restored after: the check sets storage.region
    out = tmp_path / "out"
    cfg = _saved(out)
    lines = []
    new = _with(cfg, ray__max_concurrent_trials=4, train__threads=2, storage__region="eu-west-1")
    assert check_resume(new, str(out), "experiment", log=lines.append) is True
    assert len(lines) == 1
    assert ("ray.max_concurrent_trials: 2 -> 4" in lines[0] and "train.threads: 1 -> 2" in lines[0]
            and "storage.region: None -> 'eu-west-1'" in lines[0])


@pytest.mark.parametrize("key,job,counts", [
    ("score.overlays", "score", True),       # the score job's rows
    ("score.overlays", "experiment", False),  # never read by an experiment
    ("score.overlays", "pretrain", False),    # pretraining reads inputs as scoring does, makes no overlays
    ("score.hash_salt", "pretrain", True),    # error rows' ids
    ("score.overlays", "tune", True),         # best.yaml carries every section
    ("pretrain.lr", "pretrain", True),
    ("pretrain.lr", "experiment", False),
    ("cam.target", "score", True),
    ("cam.faithfulness_images", "score", False),  # the score job has its own score.faithfulness_steps
    ("ray.num_workers", "experiment", True),  # DDP world size: the global batch
    ("ray.use_gpu", "pretrain", True),
    ("train.num_workers", "experiment", True),  # DataLoader workers: other augmentation streams
    ("ray.cpus_per_worker", "experiment", False),
    ("score.actors", "score", False),
])
def test_which_keys_change_a_jobs_results(key, job, counts):
    assert changes_results(key, job) is counts


def test_imagenet_weights_match_the_folder_the_driver_resolved_them_to(tmp_path):
    out = tmp_path / "out"
    cfg = _saved(out, SAVED + f"model:\n  weights: {out}/weights/\n")
    assert check_resume(_with(cfg, model__weights="imagenet"), str(out), "experiment", log=lambda s: None)
    other = _saved(tmp_path / "moved", SAVED + f"model:\n  weights: {out}/weights/\n")
    with pytest.raises(ResumeConfigError, match="model.weights"):
        check_resume(_with(other, model__weights="imagenet"), str(tmp_path / "moved"), "experiment")


def test_a_new_folder_gets_the_config_the_job_runs_with(tmp_path):
    cfg = _with(Config(), model__weights="imagenet")
    assert prepare_output(cfg, str(tmp_path / "exp"), "experiment", log=lambda s: None) is False
    saved = load_config(tmp_path / "exp" / "config.yaml")
    assert saved.model.weights == f"{tmp_path}/exp/weights/"  # where its driver copies the files
    assert config_changes(config_to_dict(saved), config_to_dict(cfg)) == [
        ConfigChange("model.weights", f"{tmp_path}/exp/weights/", "imagenet")]
    prepare_output(cfg, str(tmp_path / "pre"), "pretrain", log=lambda s: None)  # pretraining copies none
    assert load_config(tmp_path / "pre" / "config.yaml") == cfg


def test_a_resume_leaves_config_yaml_as_the_run_started_it(tmp_path):
    out = tmp_path / "out"
    cfg = _saved(out)
    before = (out / "config.yaml").read_bytes()
    assert prepare_output(_with(cfg, ray__max_concurrent_trials=4), str(out), "experiment", log=lambda s: None)
    assert (out / "config.yaml").read_bytes() == before


def test_a_score_output_from_before_config_yaml_is_checked_against_its_manifest(tmp_path):
    out = tmp_path / "scored"
    out.mkdir()
    cfg = _with(Config(), score__hash_salt="pepper")
    (out / "run_manifest.json").write_text(json.dumps({"counts": {}, "config": config_to_dict(cfg)}))
    with pytest.raises(ResumeConfigError, match=r"run_manifest.json.*score.hash_salt: 'pepper' -> ''"):
        check_resume(Config(), str(out), "score")
    assert not (out / "config.yaml").exists()
    assert prepare_output(cfg, str(out), "score", log=lambda s: None) is True
    assert load_config(out / "config.yaml") == cfg


def test_an_unreadable_saved_config_is_refused_naming_the_file(tmp_path):
    (tmp_path / "config.yaml").write_text("train:\n  lrr: 1\n")
    with pytest.raises(ResumeConfigError, match=r"config.yaml.*train.lrr: unknown key"):
        check_resume(Config(), str(tmp_path), "experiment")


def test_a_saved_config_on_s3_is_read_through_storage(s3_endpoint):
    cfg = load_config(None, [{"storage": {"endpoint_url": s3_endpoint}, "train": {"lr": 1e-4}}])
    out = "s3://thyro-test/resume-guard/out"
    storage.configure(s3_endpoint)
    storage.write_bytes(storage.join(out, "config.yaml"), config_to_yaml(cfg).encode())
    assert check_resume(cfg, out, "experiment", log=lambda s: None) is True
    with pytest.raises(ResumeConfigError, match=r"s3://thyro-test/resume-guard/out.*train.lr: 0.0001 -> 0.0003"):
        check_resume(_with(cfg, train__lr=3e-4), out, "experiment")


# --- the jobs, through the CLI -------------------------------------------------------------------

# Runs each job's command on a folder saved with SAVED and one --set that differs; `import ray`
# raises there, so a job that reached any Ray work before its check fails with an ImportError.
_SCRIPT = textwrap.dedent("""
    import contextlib, io, json, os, sys

    class NoRay:
        def find_spec(self, name, path=None, target=None):
            if name == "ray" or name.startswith("ray."):
                raise ImportError("ray is blocked in this test")

    sys.meta_path.insert(0, NoRay())
    from thyro.cli import main

    res = {}
    for job, argv, folder in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except ImportError as e:  # the job went past its check
                rc = "ImportError: " + str(e)
        files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        config = open(os.path.join(folder, "config.yaml")).read() if "config.yaml" in files else None
        res[job] = {"rc": rc, "stderr": err.getvalue(), "files": files, "config": config}
    res["ray_loaded"] = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
    print(json.dumps(res))
""")


@pytest.fixture(scope="module")
def job_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    given = root / "given.yaml"
    given.write_text(SAVED)
    calls = []
    for job, change, extra in [
        ("experiment", "train.lr=0.0003", []),
        ("tune", "tune.num_samples=3", []),
        ("pretrain", "pretrain.lr=0.1", ["--input", str(root)]),
        ("score", "score.hash_salt=pepper", ["--model", str(root), "--input", str(root)]),
        ("experiment-operational", "ray.max_concurrent_trials=4", []),
        ("pretrain-new", "pretrain.lr=0.1", ["--input", str(root)]),
    ]:
        folder = root / job
        if not job.endswith("-new"):
            _saved(folder)
        out_flag = "--output" if job == "score" else "--out"
        calls.append((job, [job.split("-")[0], *extra, out_flag, str(folder), "--config", str(given),
                            "--set", change], str(folder)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    p = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(calls)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    runs = json.loads(p.stdout.strip().splitlines()[-1])
    runs["saved_config"] = config_to_yaml(load_config(given))
    runs["new_config"] = config_to_yaml(load_config(given, [{"pretrain": {"lr": 0.1}}]))
    return runs


@pytest.mark.parametrize("job,key", [("experiment", "train.lr: 0.0001 -> 0.0003"),
                                     ("tune", "tune.num_samples: 16 -> 3"),
                                     ("pretrain", "pretrain.lr: 0.05 -> 0.1"),
                                     ("score", "score.hash_salt: '' -> 'pepper'")])
def test_each_job_refuses_a_changed_config_in_one_cli_line_before_writing(job_runs, job, key):
    run = job_runs[job]
    assert run["rc"] == 1
    lines = run["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"thyro {job}: error: ") and key in lines[0]
    assert run["files"] == ["config.yaml"]
    assert run["config"] == job_runs["saved_config"]


def test_no_job_reached_ray_before_its_check(job_runs):
    assert job_runs["ray_loaded"] == []


def test_an_operational_change_passes_the_check_and_keeps_config_yaml(job_runs):
    run = job_runs["experiment-operational"]
    assert run["rc"] == "ImportError: ray is blocked in this test"  # past the check, at `import ray.tune`
    assert run["files"] == ["config.yaml"] and run["config"] == job_runs["saved_config"]


def test_a_new_folder_gets_its_config_yaml_before_ray(job_runs):
    run = job_runs["pretrain-new"]
    assert run["rc"] == "ImportError: ray is blocked in this test"  # at `import ray.data`, right after
    assert run["files"] == ["config.yaml"] and run["config"] == job_runs["new_config"]
