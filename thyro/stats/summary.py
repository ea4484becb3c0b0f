"""Aggregate an experiment's trials into honest per-model statistics.

Per model over splits: mean, sd and a 95% CI of each metric (Nadeau-Bengio
corrected t interval: the splits share patients, so a CI that treats them as
independent is too narrow);
expected calibration error; the threshold reaching the target sensitivity and
the specificity there. Against the reference model (ResNet18): DeLong's test
on the same test images in each split, and, across splits, the corrected
resampled t-test of Nadeau & Bengio (2003), which accounts for the overlap of
repeated random splits that a naive pooling of p-values ignores.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats

from thyro.config import Config
from thyro.data import storage
from thyro.model import checkpoint
from thyro.stats import metrics

METRICS = ("auc", "accuracy", "recall", "precision", "f1", "specificity")
CI_METHOD = "Nadeau-Bengio corrected t interval"


def collect_trials(out: str, models: list[str], splits: list[int], run_dir: Callable,
                   skip: set[tuple[str, int]] = frozenset()) -> pd.DataFrame:
    """One row per finished (model, split); `skip`: the (model, split) pairs that failed."""
    rows = []
    for model in models:
        for s in splits:
            if (model, s) in skip:
                continue
            rd = run_dir(out, model, s)
            m = json.loads(storage.read_bytes(storage.join(rd, "metrics.json")))
            card = checkpoint.load_card(rd)
            t = m["at_target_sensitivity"]
            rows.append({"model": model, "split": s, **{k: m[k] for k in METRICS}, "ece": m["ece"],
                         "ece_calibrated": m.get("ece_calibrated", float("nan")),
                         "threshold_at_target_sensitivity": t["threshold"],
                         # measured on the test set at a threshold chosen on the calibration slice
                         "sensitivity_at_target_sensitivity": t.get("sensitivity", float("nan")),
                         "specificity_at_target_sensitivity": t["specificity"],
                         "threshold_chosen_on": t.get("chosen_on", "test"),
                         "n_train": card["split"]["n_train"], "n_test": card["split"]["n_test"],
                         "run": rd, "model_id": card.get("model_id")})
    return pd.DataFrame(rows)


def corrected_resampled_ttest(diffs, n_train: int, n_test: int) -> float:
    """Nadeau & Bengio (2003): variance inflated by n_test/n_train for overlapping splits."""
    d = np.asarray(diffs, float)
    j = len(d)
    if j < 2:
        return float("nan")
    var = d.var(ddof=1)
    if var == 0:
        return 1.0 if d.mean() == 0 else 0.0
    t = d.mean() / np.sqrt((1 / j + n_test / n_train) * var)
    return float(2 * stats.t.sf(abs(t), j - 1))


def delong_vs_reference(out: str, trials: pd.DataFrame, reference: str, run_dir: Callable) -> pd.DataFrame:
    """DeLong p-value of reference vs every other model, per split."""
    rows = []
    have_ref = set(trials.loc[trials["model"] == reference, "split"])  # a failed reference trial has no predictions
    for model in trials["model"].unique():
        if model == reference:
            continue
        for s in sorted(set(trials.loc[trials["model"] == model, "split"]) & have_ref):
            a = checkpoint.load_predictions(run_dir(out, reference, s))
            b = checkpoint.load_predictions(run_dir(out, model, s))
            j = a.merge(b, on=["image_id", "label"], suffixes=("_ref", "_model"))
            r = metrics.delong_test(j["label"], j["prob_malignant_ref"], j["prob_malignant_model"])
            rows.append({"model": model, "split": s, "auc_reference": r["auc1"], "auc_model": r["auc2"],
                         "z": r["z"], "p": r["p"]})
    return pd.DataFrame(rows)


def summarize(cfg: Config, trials: pd.DataFrame, out: str, run_dir: Callable) -> pd.DataFrame:
    ref = cfg.experiment.reference_model
    dl = delong_vs_reference(out, trials, ref, run_dir)
    if len(dl):
        storage.write_bytes(storage.join(out, "delong.csv"), dl.to_csv(index=False).encode())
    rows = []
    for model, g in trials.groupby("model", sort=False):
        row = {"model": model, "n_splits": len(g)}
        n_train, n_test = int(g["n_train"].mean()), int(g["n_test"].mean())
        for k in METRICS:
            v = g[k].to_numpy(float)
            lo, hi = metrics.corrected_interval(v, n_train, n_test)
            # every metric here is a proportion: a t interval wider than [0, 1] says "anything"
            lo, hi = max(lo, 0.0), min(hi, 1.0)
            row.update({f"{k}_mean": float(np.nanmean(v)), f"{k}_sd": float(np.nanstd(v, ddof=1)) if len(v) > 1 else float("nan"),
                        f"{k}_ci_low": lo, f"{k}_ci_high": hi})
        row["ci_method"] = CI_METHOD
        row["ece_mean"] = float(g["ece"].mean())
        row["threshold_at_target_sensitivity_mean"] = float(g["threshold_at_target_sensitivity"].mean())
        row["specificity_at_target_sensitivity_mean"] = float(g["specificity_at_target_sensitivity"].mean())
        for col in ("sensitivity_at_target_sensitivity", "ece_calibrated"):
            row[f"{col}_mean"] = float(g[col].mean()) if col in g else float("nan")
        row["threshold_chosen_on"] = str(g["threshold_chosen_on"].iloc[0]) if "threshold_chosen_on" in g else "test"
        if model != ref and len(dl):
            d = dl[dl["model"] == model]
            row["delong_p_median"] = float(d["p"].median())
            row["delong_splits_p_lt_0.05"] = int((d["p"] < 0.05).sum())
            gm = trials[trials["model"] == ref].set_index("split")["auc"]
            both = g[g["split"].isin(gm.index)]  # paired: splits where the reference trial also finished
            diffs = (gm.loc[both["split"]].to_numpy() - both["auc"].to_numpy())
            row["auc_diff_vs_reference_mean"] = float(diffs.mean()) if len(diffs) else float("nan")
            row["p_vs_reference_corrected_t"] = corrected_resampled_ttest(diffs, n_train, n_test)
        rows.append(row)
    return pd.DataFrame(rows)


def mark_failed(summary: pd.DataFrame, failed: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """Adds n_failed and failed ("split S: error; ...") per model; a model none of whose
    trials finished gets a row with n_splits 0 and no statistics, so it is not silently absent."""
    summary = summary.copy()
    if not len(failed):
        summary["n_failed"] = 0
        summary["failed"] = ""
        return summary
    missing = [m for m in models if m not in set(summary["model"])]
    if missing:
        summary = pd.concat([summary, pd.DataFrame({"model": missing, "n_splits": 0})], ignore_index=True)
    by_model = failed.groupby("model")
    summary["n_failed"] = [len(by_model.get_group(m)) if m in by_model.groups else 0 for m in summary["model"]]
    summary["failed"] = ["; ".join(f"split {r.split}: {r.error}" for r in by_model.get_group(m).itertuples())
                         if m in by_model.groups else "" for m in summary["model"]]
    order = {m: i for i, m in enumerate(models)}
    return summary.sort_values("model", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
