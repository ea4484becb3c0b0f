"""Failed trials in the summary and the report (no Ray: the tables the experiment writes)."""

import numpy as np
import pandas as pd

from thyro.config import load_config
from thyro.stats import summary


def _trials(rows):
    base = {"ece": 0.05, "threshold_at_target_sensitivity": 0.3, "specificity_at_target_sensitivity": 0.6,
            "n_train": 100, "n_test": 50, **{k: 0.8 for k in summary.METRICS}}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_report_section_names_each_failed_trial_and_its_error():
    from thyro.stats.report import failed_trials_section

    failed = pd.DataFrame([{"model": "alexnet", "split": 3, "error": "RuntimeError: <boom>"}])
    html = "".join(failed_trials_section(failed, max_failures=2))
    assert "Failed trials" in html and "1 trial(s) failed after 2 retries" in html
    assert "<td>alexnet</td>" in html and "<td>3</td>" in html and "RuntimeError: &lt;boom&gt;" in html
    assert failed_trials_section(failed.iloc[:0], 2) == [] and failed_trials_section(None, 2) == []


def test_mark_failed_lists_errors_and_keeps_a_model_with_no_finished_trial():
    t = _trials([{"model": "resnet18", "split": 0}, {"model": "resnet18", "split": 1}])
    s = summary.summarize(load_config(), t, "", run_dir=None)
    failed = pd.DataFrame([{"model": "resnet18", "split": 2, "error": "RuntimeError: boom"},
                           {"model": "alexnet", "split": 0, "error": "OSError: disk"}])
    out = summary.mark_failed(s, failed, ["resnet18", "alexnet"])
    assert out["model"].tolist() == ["resnet18", "alexnet"]
    assert out["n_splits"].tolist() == [2, 0] and out["n_failed"].tolist() == [1, 1]
    assert out["failed"].tolist() == ["split 2: RuntimeError: boom", "split 0: OSError: disk"]
    assert np.isnan(out.set_index("model").loc["alexnet", "auc_mean"])


def test_error_text_is_the_innermost_error_line():
    from thyro.distributed.experiment import _error_text

    wrapped = RuntimeError("ray::ImplicitFunc.train() (pid=1)\n  File \"x.py\", line 3, in f\n"
                           "ray.train.ControllerError: Training failed:\nTraceback (most recent call last):\n"
                           "  File \"w.py\", line 9\nRuntimeError: injected failure (X=resnet18/1)\n")
    assert _error_text(wrapped) == "RuntimeError: injected failure (X=resnet18/1)"
    assert _error_text(None) == "did not finish (no error recorded)"
