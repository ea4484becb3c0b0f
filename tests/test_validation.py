import numpy as np
import pandas as pd

from thyro.config import load_config
from thyro.splits import make_splits, split_indices
from thyro.validation import inner_cv_epochs, inner_folds


def _manifest(n=80):
    return pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "path": [f"i{i}" for i in range(n)],
                         "patient_id": [f"p{i // 2}" for i in range(n)], "label": [int(i % 8 < 2) for i in range(n)]})


def test_inner_folds_never_touch_the_outer_test_split():
    m = _manifest()
    s = make_splits(m, n_repeats=3, seed=0)
    _, outer_test = split_indices(s, m, 1)
    portion, folds = inner_folds(m, s, outer=1, n_inner=3, test_size=0.3, seed=0)
    assert set(portion.image_id).isdisjoint(m.image_id.iloc[outer_test])
    for tr, va in folds:
        assert set(portion.patient_id.iloc[tr]).isdisjoint(portion.patient_id.iloc[va])


def test_inner_cv_reports_every_epoch(tiny_phantom):
    from thyro.manifest import load_manifest

    m = load_manifest(str(tiny_phantom))
    s = make_splits(m, n_repeats=2, seed=0)
    cfg = load_config(None, [{"preprocess": {"image_size": 64}, "train": {"epochs": 2, "batch_size": 8}}])
    portion, folds = inner_folds(m, s, 0, 2, 0.3, 0)
    recs = list(inner_cv_epochs(cfg, portion, folds))
    assert [r["epoch"] for r in recs] == [1, 2]
    assert all(0 <= r["val_auc"] <= 1 and np.isfinite(r["train_loss"]) for r in recs)
