
import numpy as np
import pandas as pd
from PIL import Image

from thyro.decode import decode
from thyro.manifest import load_manifest
from thyro.splits import leakage_report, make_splits, split_indices


def _manifest(n_patients=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = int(p % 5 == 0)
        for v in range(int(rng.integers(1, 4))):
            rows.append({"image_id": f"p{p}_{v}", "path": f"p{p}_{v}", "patient_id": f"p{p}", "label": label})
    return pd.DataFrame(rows)


def test_no_patient_on_both_sides_in_any_repeat():
    m = _manifest()
    s = make_splits(m, n_repeats=10, seed=1)
    for rep in range(10):
        tr, te = split_indices(s, m, rep)
        assert set(m.patient_id.iloc[tr]).isdisjoint(m.patient_id.iloc[te])
        assert len(tr) + len(te) == len(m)


def test_deterministic_and_repeats_differ():
    m = _manifest()
    a, b = make_splits(m, seed=4), make_splits(m, seed=4)
    assert a.equals(b)
    t0 = set(a[(a.repeat == 0) & (a.subset == "test")].image_id)
    t1 = set(a[(a.repeat == 1) & (a.subset == "test")].image_id)
    assert t0 != t1


def test_stratified_by_patient_label():
    m = _manifest(n_patients=200)
    s = make_splits(m, n_repeats=3, seed=0)
    pl = m.groupby("patient_id").label.max()
    for rep in range(3):
        te = s[(s.repeat == rep) & (s.subset == "test")].patient_id.unique()
        assert abs(pl[te].mean() - pl.mean()) < 0.02
        assert abs(len(te) / len(pl) - 0.3) < 0.01


def test_leakage_report_finds_copies_and_spares_distinct_images(tiny_phantom, tmp_path):
    m = load_manifest(str(tiny_phantom))
    # A re-encoded, resized copy of image 0 under another patient.
    img = Image.open(m.path[0]).convert("L").resize((80, 80))
    img.save(tmp_path / "copy.jpg", quality=80)
    exact = tmp_path / "exact.png"
    exact.write_bytes(open(m.path[1], "rb").read())
    extra = pd.DataFrame([{"image_id": "copy", "path": str(tmp_path / "copy.jpg"), "label": m.label[0], "patient_id": "X1"},
                          {"image_id": "exact", "path": str(exact), "label": m.label[1], "patient_id": "X2"}])
    mm = pd.concat([m, extra], ignore_index=True)
    train = np.arange(len(m))
    test = np.array([len(m), len(m) + 1])
    read = lambda p: open(p, "rb").read()
    rep = leakage_report(mm, train, test, read, decode)
    assert [a for a, _ in rep["identical_images"]] == ["exact"]
    assert [a for a, _, _ in rep["near_duplicates"]] == ["copy"]
    clean = leakage_report(m, train[:20], train[20:], read, decode)
    assert clean["identical_images"] == [] and clean["near_duplicates"] == []
