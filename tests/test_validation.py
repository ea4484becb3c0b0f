import numpy as np
import pandas as pd
import pytest

from thyro.config import load_config
from thyro.data.splits import make_splits, split_indices
from thyro.stats.validation import inner_cv_epochs, inner_folds


def _manifest(n=80):
    return pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "path": [f"i{i}" for i in range(n)],
                         "patient_id": [f"p{i // 2}" for i in range(n)], "label": [int(i % 8 < 2) for i in range(n)]})


def test_no_outer_test_patient_was_seen_by_the_search():
    # The split table of an experiment run with best.yaml (tune.yaml's split section, carried
    # over unchanged) against every patient the search trained or validated on.
    from pathlib import Path

    from thyro.config import Config, config_to_dict
    from thyro.distributed.tune import apply_params

    m = _manifest(240)
    cfg = load_config(Path(__file__).parents[1] / "configs" / "tune.yaml")
    sp = cfg.split
    portion, folds = inner_folds(m, make_splits(m, sp.n_repeats, sp.test_size, sp.seed, sp.dev_fraction),
                                 cfg.tune.inner_splits, cfg.tune.inner_test_size, cfg.tune.seed)
    seen = set()
    for tr, va in folds:
        assert set(portion.patient_id.iloc[tr]).isdisjoint(portion.patient_id.iloc[va])
        seen |= set(portion.patient_id.iloc[tr]) | set(portion.patient_id.iloc[va])
    assert seen
    best = Config.model_validate(apply_params(config_to_dict(cfg), {"train.lr": 3e-4}))
    b = best.split
    experiment = make_splits(m, b.n_repeats, b.test_size, b.seed, b.dev_fraction)
    for rep in range(b.n_repeats):
        _, te = split_indices(experiment, m, rep)
        assert seen.isdisjoint(m.patient_id.iloc[te])


def test_inner_folds_need_a_dev_set():
    m = _manifest()
    with pytest.raises(ValueError, match="split.dev_fraction"):
        inner_folds(m, make_splits(m, n_repeats=2, seed=0), 2, 0.3, 0)


def test_inner_cv_reports_every_epoch(tiny_phantom):
    from thyro.data.manifest import load_manifest

    m = load_manifest(str(tiny_phantom))
    s = make_splits(m, n_repeats=2, seed=0, dev_fraction=0.4)
    cfg = load_config(None, [{"preprocess": {"image_size": 64}, "train": {"epochs": 2, "batch_size": 8}}])
    portion, folds = inner_folds(m, s, 2, 0.3, 0)
    recs = list(inner_cv_epochs(cfg, portion, folds))
    assert [r["epoch"] for r in recs] == [1, 2]
    assert all(0 <= r["val_auc"] <= 1 and np.isfinite(r["train_loss"]) for r in recs)
