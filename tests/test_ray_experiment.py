"""The experiment job end to end on the shared local Ray cluster (slow: ~1 min each)."""

import io
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from pyarrow.fs import FileSelector

from thyro.config import load_config
from thyro.data import storage
from thyro.distributed.experiment import run_dir, run_experiment
from thyro.model import checkpoint

pytestmark = pytest.mark.ray

SETTINGS = {
    "name": "smoke",
    "preprocess": {"image_size": 64},
    "train": {"epochs": 1, "batch_size": 8, "precision": "fp32"},
    "split": {"n_repeats": 3},
    "experiment": {"models": ["resnet18", "alexnet"], "splits": [0, 1], "cam_size": 16,
                   "cam_grid_per_class": 2},
    "ray": {"cpus_per_worker": 0.99, "max_concurrent_trials": 2, "max_failures": 0},
    # not the defaults: the trial must pass every CAM setting through to its analysis
    "cam": {"target": "benign", "faithfulness_images": 4, "faithfulness_steps": 4},
    "eval": {"bootstrap": 20, "calibration_fraction": 0.25},
}


def _cfg(phantom_manifest, **extra):
    return load_config(None, [SETTINGS, {"data": {"source": str(phantom_manifest)}}, extra])


@pytest.fixture(scope="module")
def s3_experiment(ray_cluster, s3_endpoint, tiny_phantom):
    """The smoke experiment, writing every output to S3 (moto on 127.0.0.1)."""
    cfg = _cfg(tiny_phantom, storage={"endpoint_url": s3_endpoint})
    out = "s3://thyro-test/experiments/smoke"
    return run_experiment(cfg, out, log=lambda s: None)


def test_smoke_writes_summary_trials_runs_and_report_to_s3(s3_experiment):
    out = s3_experiment.out
    summary = pd.read_csv(io.BytesIO(storage.read_bytes(storage.join(out, "summary.csv"))))
    assert summary["model"].tolist() == ["resnet18", "alexnet"]
    for col in ("auc_mean", "auc_sd", "auc_ci_low", "auc_ci_high", "f1_mean", "specificity_mean",
                "ece_mean", "p_vs_reference_corrected_t", "delong_p_median"):
        assert col in summary
    trials = pd.read_parquet(io.BytesIO(storage.read_bytes(storage.join(out, "trials.parquet"))))
    assert sorted(zip(trials.model, trials.split)) == [("alexnet", 0), ("alexnet", 1), ("resnet18", 0), ("resnet18", 1)]
    html = storage.read_bytes(storage.join(out, "report.html")).decode()
    assert html.count('src="data:image/png;base64,') >= 4  # ROC, calibration, CAM grid, shape plots
    for section in ("cam_in_field", "Deletion and insertion", "corrected t interval", "all-zero maps"):
        assert section in html
    assert "not for diagnosis" in html.lower()
    assert storage.exists(storage.join(out, "figures", "roc.png"))


def test_trial_runs_are_loadable_models_with_cam_analysis(s3_experiment):
    from thyro.model.predictor import Predictor

    rd = run_dir(s3_experiment.out, "resnet18", 1)
    p = Predictor(rd, cam_size=8)
    assert p.card["split"]["repeat"] == 1
    feats = pd.read_csv(io.BytesIO(storage.read_bytes(storage.join(rd, "cam_features.csv"))))
    assert {"circularity", "energy_inside", "pointing_hit", "cam_in_field", "cam_zero"} <= set(feats.columns)
    assert (feats.cam_target == 0).all()  # cam.target: benign reached the analysis
    assert p.card["outputs"]["operating_point"]["chosen_on"] == "calibration"
    assert storage.exists(storage.join(rd, "faithfulness.json"))


def test_trials_start_from_the_crops_the_job_made_once(s3_experiment, tiny_phantom):
    from thyro.data import crop_cache
    from thyro.data.manifest import load_manifest
    from thyro.image.preset import Preset

    n = len(load_manifest(str(tiny_phantom)))
    base = storage.join(s3_experiment.out, "crops")
    fs, path = storage.pyarrow_filesystem(base)
    assert len(fs.get_file_info(FileSelector(path))) == 1  # both models train at 64 px: one preset, one cache
    for model in ("resnet18", "alexnet"):
        card = checkpoint.load_card(run_dir(s3_experiment.out, model, 0))
        assert card["data"]["crops_from_cache"] == n  # every image; none cropped again in the trial
        assert crop_cache.is_current(crop_cache.cache_dir(base, Preset.from_dict(card["inputs"]["preprocessing"])))


def test_each_trial_used_its_patient_grouped_split(s3_experiment):
    out = s3_experiment.out
    splits = pd.read_parquet(io.BytesIO(storage.read_bytes(storage.join(out, "splits.parquet"))))
    for model in ("resnet18", "alexnet"):
        for rep in (0, 1):
            preds = checkpoint.load_predictions(run_dir(out, model, rep))
            s = splits[splits.repeat == rep]
            assert set(preds.image_id) == set(s[s.subset == "test"].image_id)
            test_patients = set(s[s.subset == "test"].patient_id)
            assert test_patients.isdisjoint(s[s.subset == "train"].patient_id)


def test_credentials_never_written(s3_experiment):
    out = s3_experiment.out
    for name in ("config.yaml", "report.html", storage.join("runs", "resnet18", "split00", "metadata.json")):
        assert "testing" not in storage.read_bytes(storage.join(out, name)).decode().replace("thyro-test", "")


def test_interrupted_experiment_resumes_to_the_same_summary(ray_cluster, tiny_phantom, s3_experiment, tmp_path):
    """A real SIGINT mid-experiment; the rerun redoes no finished trial and ends
    with the summary of the uninterrupted (S3) run of the same config."""
    cfg_file = tmp_path / "cfg.yaml"
    settings = {**SETTINGS, "data": {"source": str(tiny_phantom)},
                "ray": {**SETTINGS["ray"], "max_concurrent_trials": 1, "address": ray_cluster}}
    cfg_file.write_text(yaml.safe_dump(settings))
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "jobs.experiment", "--config", str(cfg_file), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = [run_dir(str(out), m, s) for m in ("resnet18", "alexnet") for s in (0, 1)]
    deadline = time.time() + 300
    while time.time() < deadline and not any(checkpoint.is_complete(r) for r in first):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    log, _ = proc.communicate(timeout=120)
    done = [r for r in first if checkpoint.is_complete(r)]
    assert 1 <= len(done) < 4, log[-2000:]
    stamps = {r: checkpoint.load_card(r)["created"] for r in done}

    res = run_experiment(load_config(cfg_file), str(out), log=lambda s: None)
    assert all(checkpoint.load_card(r)["created"] == t for r, t in stamps.items())  # not redone
    assert all(checkpoint.is_complete(r) for r in first)
    cols = ["model", "auc_mean", "accuracy_mean", "f1_mean", "specificity_mean"]
    pd.testing.assert_frame_equal(res.summary[cols], s3_experiment.summary[cols], atol=1e-6)
