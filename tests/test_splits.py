
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from thyro.data.decode import decode
from thyro.data.manifest import load_manifest
from thyro.data.splits import calibration_split, dev_indices, leakage_report, make_splits, split_indices


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


def _test_patients(s, rep):
    return set(s[(s.repeat == rep) & (s.subset == "test")].patient_id)


def test_dev_patients_are_in_no_test_split_and_train_in_every_one():
    m = _manifest(n_patients=100)
    s = make_splits(m, n_repeats=10, seed=2, dev_fraction=0.2)
    dev = set(m.patient_id.iloc[dev_indices(s, m)])
    assert len(dev) == 20  # 20% of 100 patients
    for rep in range(10):
        tr, te = split_indices(s, m, rep)
        assert dev.isdisjoint(m.patient_id.iloc[te]) and dev <= set(m.patient_id.iloc[tr])
        assert len(tr) + len(te) == len(m)
        assert set(s[(s.repeat == rep) & (s.subset == "dev")].patient_id) == dev  # one set for all repeats


def test_test_size_stays_a_fraction_of_all_patients_with_a_dev_set():
    m = _manifest(n_patients=200)
    s = make_splits(m, n_repeats=3, seed=0, dev_fraction=0.25)
    pl = m.groupby("patient_id").label.max()
    dev = m.patient_id.iloc[dev_indices(s, m)].unique()
    assert abs(pl[dev].mean() - pl.mean()) < 0.02  # the dev draw is stratified too
    for rep in range(3):
        assert len(_test_patients(s, rep)) == 60  # 30% of all 200 patients, not of the 150 left


def test_no_dev_fraction_keeps_the_split_table_of_the_plain_draw():
    # dev_fraction = 0 must reproduce sklearn's StratifiedShuffleSplit over patients,
    # so split tables (and results) made before the dev set existed are unchanged.
    from sklearn.model_selection import StratifiedShuffleSplit

    m = _manifest()
    s = make_splits(m, n_repeats=4, seed=7)
    pl = m.groupby("patient_id", sort=True).label.max()
    sss = StratifiedShuffleSplit(n_splits=4, test_size=0.3, random_state=7)
    for rep, (_, te) in enumerate(sss.split(pl.index, pl.to_numpy())):
        assert _test_patients(s, rep) == set(pl.index[te])
    assert "dev" not in set(s.subset) and len(dev_indices(s, m)) == 0


def test_calibration_split_holds_back_whole_patients_of_both_classes():
    m = _manifest(n_patients=100)
    s = make_splits(m, n_repeats=1, seed=0)
    tr, _ = split_indices(s, m, 0)
    fit, cal = calibration_split(m, tr, 0.2, seed=0)
    assert sorted(np.concatenate([fit, cal])) == sorted(tr)
    assert set(m.patient_id.iloc[fit]).isdisjoint(m.patient_id.iloc[cal])
    pl = m.iloc[tr].groupby("patient_id").label.max()
    cal_pl = pl[m.patient_id.iloc[cal].unique()]
    for label in (0, 1):  # per class: round(0.2 * patients of that class)
        assert (cal_pl == label).sum() == round(0.2 * (pl == label).sum())
    assert calibration_split(m, tr, 0.2, seed=0)[1].tolist() == cal.tolist()


def test_calibration_split_keeps_one_patient_of_each_class_when_small():
    m = _manifest(n_patients=10)  # 2 malignant patients: 0.1 of them rounds to 0
    tr = np.arange(len(m))
    fit, cal = calibration_split(m, tr, 0.1, seed=0)
    assert set(m.label.iloc[cal]) == {0, 1} and set(m.label.iloc[fit]) == {0, 1}
    fit0, cal0 = calibration_split(m, tr, 0.0, seed=0)
    assert fit0.tolist() == tr.tolist() and len(cal0) == 0


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


def test_leakage_report_takes_known_hashes_instead_of_reading(tiny_phantom):
    """Hashes made earlier (the crop cache) give the same report, and those files are not read."""
    from thyro.data.splits import image_hashes

    m = load_manifest(str(tiny_phantom))
    mm = pd.concat([m, m.iloc[[0]].assign(image_id="dup", patient_id="X9")], ignore_index=True)
    train, test = np.arange(len(m)), np.array([len(m)])
    read = lambda p: open(p, "rb").read()
    want = leakage_report(mm, train, test, read, decode)
    known = {p: image_hashes(read(p), decode(read(p), p)) for p in m.path}
    got = leakage_report(mm, train, test, lambda p: pytest.fail(f"read {p}"), decode, known=known)
    assert got == want and got["identical_images"] == [("dup", m.image_id[0])]
