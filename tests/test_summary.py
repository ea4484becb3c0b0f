"""summary.summarize: split-level intervals are the Nadeau-Bengio corrected ones."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from thyro.config import load_config
from thyro.stats import summary


def test_summary_interval_is_the_corrected_t_interval(tmp_path):
    rng = np.random.default_rng(0)
    j = 10
    trials = pd.DataFrame({"model": "resnet18", "split": range(j),
                           **{k: rng.uniform(0.7, 0.9, j) for k in summary.METRICS},
                           "ece": 0.05, "threshold_at_target_sensitivity": 0.3,
                           "specificity_at_target_sensitivity": 0.6, "n_train": 356, "n_test": 152})
    out = summary.summarize(load_config(), trials, str(tmp_path), run_dir=None)
    v = trials["auc"].to_numpy()
    # mean +- t(0.975, 9) * sqrt((1/10 + 152/356) * s^2), written out
    half = stats.t.ppf(0.975, j - 1) * np.sqrt((1 / j + 152 / 356) * v.var(ddof=1))
    row = out.iloc[0]
    assert (row["auc_ci_low"], row["auc_ci_high"]) == pytest.approx((v.mean() - half, v.mean() + half), rel=1e-12)
    assert row["ci_method"] == "Nadeau-Bengio corrected t interval"


def test_summary_interval_is_clipped_to_the_unit_range(tmp_path):
    trials = pd.DataFrame({"model": "m", "split": range(3), **{k: [0.2, 0.99, 1.0] for k in summary.METRICS},
                           "ece": 0.05, "threshold_at_target_sensitivity": 0.3,
                           "specificity_at_target_sensitivity": 0.6, "n_train": 70, "n_test": 30})
    row = summary.summarize(load_config(), trials, str(tmp_path), run_dir=None).iloc[0]
    assert row["auc_ci_low"] == 0.0 and row["auc_ci_high"] == 1.0  # the raw interval is wider on both sides
