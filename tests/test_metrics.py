import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from thyro import metrics


def _scores(seed=0, n=120):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    p1 = 1 / (1 + np.exp(-(1.5 * y + rng.normal(0, 1, n))))
    p2 = 1 / (1 + np.exp(-(0.8 * y + 0.5 * np.log(p1 / (1 - p1)) + rng.normal(0, 1, n))))
    return y, np.round(p1, 2), np.round(p2, 2)  # rounding makes ties, which DeLong must handle


def _delong_by_definition(y, a, b):
    """DeLong et al. (1988), eqs. of the structural components, computed literally in O(m n)."""
    def psi(x, z):
        return (x > z) + 0.5 * (x == z)
    out = []
    for p in (a, b):
        X, Y = p[y == 1], p[y == 0]
        K = psi(X[:, None], Y[None, :])
        out.append((K.mean(), K.mean(1), K.mean(0)))
    m, n = (y == 1).sum(), (y == 0).sum()
    V10 = np.vstack([o[1] for o in out])
    V01 = np.vstack([o[2] for o in out])
    S = np.cov(V10) / m + np.cov(V01) / n
    var = S[0, 0] + S[1, 1] - 2 * S[0, 1]
    z = (out[0][0] - out[1][0]) / np.sqrt(var)
    return out[0][0], out[1][0], z, 2 * stats.norm.sf(abs(z))


def test_delong_matches_the_definition():
    y, a, b = _scores()
    r = metrics.delong_test(y, a, b)
    auc1, auc2, z, p = _delong_by_definition(y, a, b)
    assert r["auc1"] == pytest.approx(auc1, abs=1e-12) and r["auc2"] == pytest.approx(auc2, abs=1e-12)
    assert r["z"] == pytest.approx(z, rel=1e-9) and r["p"] == pytest.approx(p, rel=1e-9)
    assert r["auc1"] == pytest.approx(roc_auc_score(y, a))


def test_delong_of_identical_scores_is_no_difference():
    y, a, _ = _scores()
    r = metrics.delong_test(y, a, a)
    assert r["diff"] == 0 and r["p"] == 1.0


def test_delong_is_calibrated_under_the_null():
    # Two equally good, correlated markers: p < 0.05 in about 5% of data sets.
    rng = np.random.default_rng(1)
    rejections = 0
    for _ in range(400):
        y = (rng.random(150) < 0.3).astype(int)
        common = rng.normal(0, 1, 150)
        a = y + common + rng.normal(0, 1, 150)
        b = y + common + rng.normal(0, 1, 150)
        rejections += metrics.delong_test(y, a, b)["p"] < 0.05
    assert 0.02 < rejections / 400 < 0.09


def test_binary_metrics_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.2, 0.6, 0.1, 0.1, 0.3, 0.2])
    m = metrics.binary_metrics(y, p, 0.5)
    assert m["confusion"] == {"tn": 4, "fp": 1, "fn": 1, "tp": 2}
    assert m["recall"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(4 / 5)
    assert m["precision"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(6 / 8)
    assert m["f1"] == pytest.approx(2 / 3)


def test_bootstrap_ci_brackets_the_estimate():
    y, a, _ = _scores(n=200)
    ci = metrics.bootstrap_ci(y, a, n_boot=300)
    m = metrics.binary_metrics(y, a)
    for k in metrics.METRIC_NAMES:
        assert ci[k][0] <= m[k] <= ci[k][1]
    assert ci["auc"][1] - ci["auc"][0] > 0.02


def test_ece_is_zero_when_calibrated_and_large_when_not():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert metrics.expected_calibration_error(y, p) < 0.02
    assert metrics.expected_calibration_error(y, np.clip(p + 0.3, 0, 1)) > 0.2


def test_threshold_reaches_target_sensitivity():
    y, a, _ = _scores(n=300)
    t = metrics.threshold_for_sensitivity(y, a, 0.9)
    assert ((a >= t["threshold"])[y == 1]).mean() >= 0.9
    assert t["specificity"] == pytest.approx(((a < t["threshold"])[y == 0]).mean())
