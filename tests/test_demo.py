"""The embedded demo's archive: every broken file it plants becomes an error row (no Ray)."""

import pandas as pd

from thyro.data.sources import discover
from thyro.demo import build_archive
from thyro.image.transforms import resolve_preset
from thyro.model.scoring import prepare


def test_demo_archive_yields_one_row_per_file_and_an_error_per_broken_one(tmp_path):
    truth = build_archive(tmp_path, n_benign=4, n_malignant=2, seed=1)
    items = list(discover(str(tmp_path / "archive")))
    assert len(items) == len(truth) == 6 + 4
    rows = [r for it in items for r in prepare(it, resolve_preset("study", 64))]
    status = pd.Series({r["input_uri"].split("/archive/", 1)[1]: r["status"] for r in rows})
    broken = truth[truth.truth.isna()].rel.str.removeprefix("archive/")
    assert len(rows) == len(truth)
    assert (status[broken] == "error").all() and (status.drop(broken) == "ok").all()
