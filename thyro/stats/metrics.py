"""Binary classification metrics with honest uncertainty.

Positive class = malignant (1). `prob` is the predicted probability of malignancy.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special, stats
from sklearn import metrics as skm

METRIC_NAMES = ("auc", "accuracy", "recall", "specificity", "precision", "f1")


def binary_metrics(y: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict:
    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=float)
    pred = (prob >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "auc": float(skm.roc_auc_score(y, prob)) if len(np.unique(y)) == 2 else float("nan"),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "threshold": float(threshold),
        "n": int(len(y)), "n_malignant": int(y.sum()),
    }


def _patients_by_class(y: np.ndarray, groups) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Image positions of each malignant and each benign patient (label = max of its images)."""
    if groups is None:
        ids = np.arange(len(y))
    else:
        ids = np.asarray(groups)
        if len(ids) != len(y):
            raise ValueError(f"groups has {len(ids)} entries for {len(y)} images")
    _, inv = np.unique(ids, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    members = np.split(order, np.flatnonzero(np.diff(inv[order])) + 1)
    malignant = [m for m in members if y[m].max() == 1]
    benign = [m for m in members if y[m].max() == 0]
    return malignant, benign


def bootstrap_ci(y: np.ndarray, prob: np.ndarray, threshold: float = 0.5, n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05, groups=None) -> dict[str, tuple[float, float]]:
    """Percentile CIs of every metric, resampling patients with all their images.

    Images of one patient are correlated, so the patient is the unit drawn
    (`groups` = patient ids; None: every image its own patient). Patients are
    drawn within the malignant and within the benign patients, so every
    replicate keeps the class balance and AUC stays defined.
    """
    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=float)
    if not np.isfinite(prob).all():  # sklearn refuses them; resample_metrics would rank them silently
        raise ValueError(f"bootstrap_ci: {int((~np.isfinite(prob)).sum())} probabilities are NaN or infinite")
    rng = np.random.default_rng(seed)
    malignant, benign = _patients_by_class(y, groups)
    vals = np.empty((n_boot, len(METRIC_NAMES)))
    for b in range(n_boot):
        drawn = [malignant[i] for i in rng.choice(len(malignant), len(malignant))] if malignant else []
        drawn += [benign[i] for i in rng.choice(len(benign), len(benign))] if benign else []
        idx = np.concatenate(drawn)
        vals[b] = resample_metrics(y[idx], prob[idx], threshold)
    q = (100 * alpha / 2, 100 * (1 - alpha / 2))
    return {k: tuple(float(x) for x in np.nanpercentile(vals[:, j], q)) for j, k in enumerate(METRIC_NAMES)}


def resample_metrics(y: np.ndarray, prob: np.ndarray, threshold: float) -> tuple[float, ...]:
    """`binary_metrics`' METRIC_NAMES values from counts, for the bootstrap's inner loop.

    sklearn's input validation costs ~17 ms per call (3.4 s of a 200-replicate
    bootstrap, 17 s at the default 1,000, per trial); this is ~0.05 ms. Same
    zero-division rules as `binary_metrics`; the AUC is the Mann-Whitney count
    with ties as one half, equal to sklearn's trapezoid to rounding (a test holds
    both to sklearn).
    """
    pos, neg = prob[y == 1], prob[y == 0]
    m, n = len(pos), len(neg)
    pred = prob >= threshold
    tp = int(np.count_nonzero(pred[y == 1]))
    fp = int(np.count_nonzero(pred[y == 0]))
    fn, tn = m - tp, n - fp
    if m and n:
        neg = np.sort(neg)
        below = np.searchsorted(neg, pos, "left").sum()
        not_above = np.searchsorted(neg, pos, "right").sum()
        auc = float(below + not_above) / (2.0 * m * n)
    else:
        auc = float("nan")
    return (auc,
            (tp + tn) / (m + n),
            tp / (tp + fn) if tp + fn else 0.0,
            tn / (tn + fp) if tn + fp else float("nan"),
            tp / (tp + fp) if tp + fp else 0.0,
            2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0)


def mean_ci(values, seed: int = 0, n_boot: int = 10000, alpha: float = 0.05) -> tuple[float, float]:
    """Bootstrap percentile CI of the mean of independent values.

    Not for values over repeated splits: those share patients, and this interval
    is too narrow for them; use `corrected_interval`.
    """
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) < 2:
        return (float("nan"), float("nan"))
    means = np.random.default_rng(seed).choice(v, (n_boot, len(v))).mean(1)
    return tuple(float(x) for x in np.percentile(means, (100 * alpha / 2, 100 * (1 - alpha / 2))))


def corrected_interval(values, n_train: int, n_test: int, alpha: float = 0.05) -> tuple[float, float]:
    """Nadeau & Bengio (2003) interval of the mean of a metric over J repeated random splits.

    The splits share patients, so their estimates are correlated; the variance
    of the mean is inflated from s^2/J to (1/J + n_test/n_train) s^2, with
    t(J-1) quantiles: the interval behind the corrected resampled t-test.
    """
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    j = len(v)
    if j < 2:
        return (float("nan"), float("nan"))
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"corrected_interval needs positive n_train and n_test (got {n_train}, {n_test})")
    half = stats.t.ppf(1 - alpha / 2, j - 1) * np.sqrt((1 / j + n_test / n_train) * v.var(ddof=1))
    return (float(v.mean() - half), float(v.mean() + half))


def _midrank(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, method="average")


def delong_test(y: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> dict:
    """DeLong et al. (1988) test of two correlated AUCs on the same cases.

    Uses the fast midrank algorithm of Sun & Xu (2014). Returns both AUCs,
    their difference, z and the two-sided p-value.
    """
    y = np.asarray(y).astype(int)
    preds = np.vstack([np.asarray(p1, float), np.asarray(p2, float)])
    pos, neg = preds[:, y == 1], preds[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError("DeLong test needs at least two cases of each class")
    tx = np.vstack([_midrank(r) for r in pos])
    ty = np.vstack([_midrank(r) for r in neg])
    tz = np.vstack([_midrank(r) for r in preds[:, np.r_[np.flatnonzero(y == 1), np.flatnonzero(y == 0)]]])
    aucs = tz[:, :m].sum(1) / (m * n) - (m + 1) / (2 * n)
    v01 = (tz[:, :m] - tx) / n
    v10 = 1 - (tz[:, m:] - ty) / m
    cov = np.cov(v01) / m + np.cov(v10) / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = aucs[0] - aucs[1]
    if var <= 0:
        z = 0.0 if diff == 0 else np.inf * np.sign(diff)
    else:
        z = diff / np.sqrt(var)
    p = float(2 * stats.norm.sf(abs(z)))
    return {"auc1": float(aucs[0]), "auc2": float(aucs[1]), "diff": float(diff),
            "z": float(z), "p": p, "var": float(var)}


def combine_p_values(p_values) -> float:
    """Fisher's method for independent tests (e.g. DeLong per split).

    Splits reuse the same patients, so the tests are not independent; the
    combined value is reported as descriptive, next to the per-split values.
    """
    p = np.asarray([x for x in p_values if np.isfinite(x)], float)
    if not len(p):
        return float("nan")
    return float(stats.combine_pvalues(np.clip(p, 1e-300, 1), method="fisher").pvalue)


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> float:
    """ECE of the malignancy probability over equal-width bins."""
    y = np.asarray(y).astype(float)
    prob = np.asarray(prob, dtype=float)
    bins = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(y[sel].mean() - prob[sel].mean())
    return float(ece)


def threshold_for_sensitivity(y: np.ndarray, prob: np.ndarray, target: float = 0.95) -> dict:
    """Highest threshold whose sensitivity reaches `target`, and the specificity there."""
    # drop_intermediate=False: the default drops points on straight stretches of
    # the ROC curve, and the first point reaching the target may be one of them.
    fpr, tpr, thr = skm.roc_curve(np.asarray(y).astype(int), np.asarray(prob, float), drop_intermediate=False)
    ok = np.flatnonzero(tpr >= target)
    i = int(ok[0])
    t = float(min(thr[i], 1.0))
    return {"threshold": t, "sensitivity": float(tpr[i]), "specificity": float(1 - fpr[i]),
            "target_sensitivity": float(target)}


def sens_spec_at(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict:
    """Sensitivity and specificity of `prob >= threshold` (e.g. a threshold chosen elsewhere)."""
    y = np.asarray(y).astype(int)
    pred = np.asarray(prob, dtype=float) >= threshold
    pos, neg = y == 1, y == 0
    return {"sensitivity": float(pred[pos].mean()) if pos.any() else float("nan"),
            "specificity": float((~pred[neg]).mean()) if neg.any() else float("nan"),
            "threshold": float(threshold)}


def fit_temperature(margin: np.ndarray, y: np.ndarray) -> float:
    """Temperature T > 0 minimising the NLL of sigmoid(margin / T) (Guo et al. 2017).

    `margin` is the log-odds of malignancy (logit_malignant - logit_benign) on
    predictions the model was not trained on. T > 1 softens an overconfident model.
    """
    z = np.asarray(margin, dtype=float)
    y = np.asarray(y).astype(int)
    if len(z) != len(y):
        raise ValueError(f"fit_temperature: {len(z)} margins for {len(y)} labels")
    if not np.isfinite(z).all():
        raise ValueError("fit_temperature: margins must be finite")
    if len(np.unique(y)) != 2:
        raise ValueError("fit_temperature needs predictions of both classes")
    sign = 2 * y - 1

    def nll(log_t: float) -> float:
        return float(np.logaddexp(0.0, -sign * z / np.exp(log_t)).sum())

    # Bounded search over log T: separable margins push T towards 0 without end.
    res = optimize.minimize_scalar(nll, bounds=(np.log(1e-3), np.log(1e3)), method="bounded",
                                   options={"xatol": 1e-8})
    return float(np.exp(res.x))


def calibrated_prob(margin: np.ndarray, temperature: float) -> np.ndarray:
    """Malignancy probability after temperature scaling: sigmoid(margin / T)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return special.expit(np.asarray(margin, dtype=float) / temperature)
