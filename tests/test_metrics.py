import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from thyro.stats import metrics


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


def test_corrected_interval_by_hand():
    # J = 4 values, mean 0.8; the NaN is ignored.
    v = [0.7, 0.8, 0.9, 0.8]
    s2 = ((0.7 - 0.8) ** 2 + 0 + (0.9 - 0.8) ** 2 + 0) / 3
    t = 3.182446305284263  # t(0.975, df=3), printed tables: 3.182
    half = t * np.sqrt((1 / 4 + 30 / 70) * s2)
    lo, hi = metrics.corrected_interval(v + [float("nan")], n_train=70, n_test=30)
    assert (lo, hi) == pytest.approx((0.8 - half, 0.8 + half), rel=1e-9)
    assert np.isnan(metrics.corrected_interval([0.8], 70, 30)).all()


def test_corrected_interval_is_wider_than_the_naive_t_interval():
    v = np.random.default_rng(0).normal(0.85, 0.03, 10)
    naive = stats.t.interval(0.95, 9, loc=v.mean(), scale=stats.sem(v))  # scipy, no correction
    lo, hi = metrics.corrected_interval(v, n_train=70, n_test=30)
    # (1/J + n_test/n_train) / (1/J) = 1 + 10 * 3/7: the half-width grows by its square root.
    assert (hi - lo) / (naive[1] - naive[0]) == pytest.approx(np.sqrt(1 + 10 * 30 / 70), rel=1e-9)


def _patients(n_patients=60, k=5, seed=0):
    """Each patient's k images carry one score (copies): the patient is the unit of information."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n_patients) % 3 == 0).astype(int)
    p = np.round(1 / (1 + np.exp(-(1.2 * y + rng.normal(0, 1, n_patients)))), 3)
    pid = np.array([f"p{i:03d}" for i in range(n_patients)])
    return y, p, np.repeat(y, k), np.repeat(p, k), np.repeat(pid, k)


def test_patient_bootstrap_of_copied_images_equals_the_one_image_per_patient_bootstrap():
    # Copying every patient's image k times changes no metric of any resample of patients,
    # so the patient-grouped intervals must be those of the de-duplicated data.
    y, p, yk, pk, pid = _patients()
    a = metrics.bootstrap_ci(yk, pk, n_boot=200, seed=3, groups=pid)
    b = metrics.bootstrap_ci(y, p, n_boot=200, seed=3)
    for k in metrics.METRIC_NAMES:
        assert a[k] == pytest.approx(b[k], abs=1e-12)


def test_several_images_per_patient_widen_the_interval_over_per_image_resampling():
    _, _, yk, pk, pid = _patients(k=5)
    grouped = metrics.bootstrap_ci(yk, pk, n_boot=300, seed=1, groups=pid)["auc"]
    per_image = metrics.bootstrap_ci(yk, pk, n_boot=300, seed=1)["auc"]
    # Treating 5 copies as 5 patients shrinks the width by about sqrt(5) = 2.24.
    assert (grouped[1] - grouped[0]) > 1.8 * (per_image[1] - per_image[0])


def _threshold_brute_force(y, p, target):
    """Every distinct score as a threshold; the highest whose sensitivity reaches the target."""
    best = None
    for t in np.unique(p):
        sens = (p[y == 1] >= t).mean()
        if sens >= target and (best is None or t > best[0]):
            best = (t, sens, (p[y == 0] < t).mean())
    return best


def test_threshold_is_the_right_corner_on_a_straight_stretch_of_the_roc():
    # Four malignant scores in a row above every benign but one: a vertical ROC stretch,
    # whose inner points roc_curve drops by default.
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.95, 0.5, 0.4, 0.3, 0.1])
    t = metrics.threshold_for_sensitivity(y, p, 0.6)
    assert (t["threshold"], t["sensitivity"], t["specificity"]) == pytest.approx((0.7, 0.6, 0.8))
    assert (t["threshold"], t["sensitivity"], t["specificity"]) == pytest.approx(_threshold_brute_force(y, p, 0.6))


def test_threshold_matches_brute_force_with_ties():
    y, a, b = _scores(seed=5, n=150)  # scores rounded to 2 decimals: many ties and collinear points
    for p in (a, b):
        for target in (0.5, 0.8, 0.9, 0.95, 1.0):
            t = metrics.threshold_for_sensitivity(y, p, target)
            assert (t["threshold"], t["sensitivity"], t["specificity"]) == pytest.approx(
                _threshold_brute_force(y, p, target))


def test_sens_spec_at_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.2, 0.6, 0.1, 0.1, 0.3, 0.2])
    r = metrics.sens_spec_at(y, p, 0.6)  # predicted malignant: 0.9, 0.8, 0.6
    assert r == pytest.approx({"sensitivity": 2 / 3, "specificity": 4 / 5, "threshold": 0.6})


def test_temperature_matches_logistic_regression_on_the_log_odds():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, 3000)
    y = (rng.random(3000) < 1 / (1 + np.exp(-z))).astype(int)
    margin = 2.5 * z  # an overconfident model: the calibrated T is about 2.5
    T = metrics.fit_temperature(margin, y)
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-12, max_iter=1000)  # C=inf: no penalty
    lr.fit(margin[:, None], y)
    assert 1 / T == pytest.approx(lr.coef_[0, 0], rel=1e-5)
    assert T == pytest.approx(2.5, rel=0.1)


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-z))).astype(int)
    margin = 3 * z
    T = metrics.fit_temperature(margin[:10000], y[:10000])  # fitted on one half, checked on the other
    before = metrics.expected_calibration_error(y[10000:], metrics.calibrated_prob(margin[10000:], 1.0))
    after = metrics.expected_calibration_error(y[10000:], metrics.calibrated_prob(margin[10000:], T))
    assert before > 0.05 and after < 0.02


def _same(a: float, b: float, tol: float = 0.0) -> bool:
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= tol


def test_resample_metrics_equal_sklearn_metrics():
    """The bootstrap's count-based metrics against `binary_metrics` (sklearn), with tied
    probabilities, single-class samples, and thresholds that predict all or nothing."""
    rng = np.random.default_rng(7)
    cases = 0
    for trial in range(400):
        n = int(rng.integers(1, 40))
        y = (rng.random(n) < rng.choice([0.0, 0.3, 1.0], p=[0.1, 0.8, 0.1])).astype(int)
        p = np.round(rng.random(n), int(rng.integers(1, 4)))  # few decimals: many ties
        t = float(rng.choice([0.0, 0.5, 1.01, p[0]]))
        ref = metrics.binary_metrics(y, p, t)
        got = metrics.resample_metrics(y, p, t)
        for k, v in zip(metrics.METRIC_NAMES, got):
            assert _same(v, ref[k], 1e-12 if k == "auc" else 0.0), (trial, k, v, ref[k])
        cases += len(np.unique(y)) == 2
    assert cases > 250  # most cases have both classes, so the AUC path is exercised


def test_bootstrap_ci_equals_a_loop_over_sklearn_metrics():
    y, a, _ = _scores(n=120)
    pid = np.repeat(np.arange(60), 2)
    y = np.repeat(y[:60], 2)
    rng = np.random.default_rng(3)
    reference = {k: [] for k in metrics.METRIC_NAMES}
    malignant, benign = metrics._patients_by_class(y, pid)
    for _ in range(150):
        idx = np.concatenate([malignant[i] for i in rng.choice(len(malignant), len(malignant))]
                             + [benign[i] for i in rng.choice(len(benign), len(benign))])
        m = metrics.binary_metrics(y[idx], a[idx], 0.4)
        for k in metrics.METRIC_NAMES:
            reference[k].append(m[k])
    ci = metrics.bootstrap_ci(y, a, 0.4, n_boot=150, seed=3, groups=pid)
    for k in metrics.METRIC_NAMES:
        assert np.allclose(ci[k], np.nanpercentile(reference[k], (2.5, 97.5)), rtol=0, atol=1e-12), k


def test_bootstrap_ci_refuses_nan_probabilities():
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        metrics.bootstrap_ci(y, np.array([0.1, np.nan, 0.2, 0.9]), n_boot=5)
