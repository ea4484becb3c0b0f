"""The tune job: ASHA over nested inner splits, on the shared local Ray cluster."""

import math

import pandas as pd
import pytest

from thyro.config import load_config
from thyro.distributed.tune import run_tune

pytestmark = pytest.mark.ray


def test_tune_smoke_writes_a_config_the_experiment_accepts(ray_cluster, tiny_phantom, tmp_path):
    cfg = load_config(None, [{
        "data": {"source": str(tiny_phantom)},
        "preprocess": {"image_size": 64},
        "train": {"epochs": 2, "precision": "fp32"},
        "split": {"dev_fraction": 0.4},
        "tune": {"num_samples": 3, "grace_period": 1, "inner_splits": 2, "image_size": [64],
                 "batch_size": [8], "lr": [1e-4, 1e-3]},
        "ray": {"cpus_per_worker": 0.99, "max_concurrent_trials": 2, "max_failures": 0},
    }])
    res = run_tune(cfg, str(tmp_path / "tune"), log=lambda s: None)
    assert len(res.trials) == 3 and (tmp_path / "tune" / "tune_results.csv").exists()
    best = load_config(res.best_config)  # the same loader `thyro experiment` uses
    assert 1e-4 <= best.train.lr <= 1e-3 and best.train.batch_size == 8
    assert best.train.lr == res.best_params["train.lr"]
    assert best.experiment.models == cfg.experiment.models  # everything else carried over
    assert best.split == cfg.split  # the experiment keeps the dev set out of its test splits
    text = (tmp_path / "tune" / "best.yaml").read_text()
    splits = pd.read_parquet(tmp_path / "tune" / "splits.parquet")
    n_dev = splits.loc[splits.subset == "dev", "patient_id"].nunique()
    assert n_dev == math.ceil(0.4 * splits.patient_id.nunique())
    assert f"development set of {n_dev} patients" in text
    assert set(res.trials["searched_on"]) == {text.split("Searched on the ")[1].split(";")[0]}
    # the dev set's images, cropped once for every trial and inner fold
    from thyro.data import crop_cache

    (cache,) = (tmp_path / "tune" / "crops").iterdir()
    manifest = pd.read_parquet(tmp_path / "tune" / "manifest.parquet")
    dev_ids = set(splits.loc[splits.subset == "dev", "patient_id"])
    assert set(crop_cache.load(str(cache))) == set(manifest.loc[manifest.patient_id.isin(dev_ids), "path"])


def test_tune_without_a_dev_set_fails_before_starting_ray(tiny_phantom, tmp_path):
    cfg = load_config(None, [{"data": {"source": str(tiny_phantom)}}])
    with pytest.raises(ValueError, match="split.dev_fraction"):
        run_tune(cfg, str(tmp_path / "tune"), log=lambda s: None)
    assert not (tmp_path / "tune").exists()
