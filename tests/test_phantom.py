import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from scipy.stats import fisher_exact
from sklearn.metrics import roc_auc_score

from thyro.data import phantom, screen


def _digest(folder):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted((folder / "images").iterdir()))).hexdigest()


def test_deterministic_by_seed(tmp_path):
    a = phantom.generate(tmp_path / "a", n_benign=3, n_malignant=2, size=64, seed=7)
    b = phantom.generate(tmp_path / "b", n_benign=3, n_malignant=2, size=64, seed=7)
    c = phantom.generate(tmp_path / "c", n_benign=3, n_malignant=2, size=64, seed=8)
    assert _digest(a.parent) == _digest(b.parent) != _digest(c.parent)


def test_manifest_counts_masks_and_patients(tiny_phantom):
    df = pd.read_csv(tiny_phantom)
    assert (df.label == "benign").sum() == 24 and (df.label == "malignant").sum() == 12
    assert df.groupby("patient_id").size().max() > 1  # multi_image_fraction gave some patients more images
    assert df.groupby("patient_id").label.nunique().max() == 1
    for m in df.mask_path:
        mask = np.asarray(Image.open(tiny_phantom.parent / m))
        assert mask.max() == 255 and 0 < (mask > 0).mean() < 0.3


def test_images_look_like_bmode(tiny_phantom):
    df = pd.read_csv(tiny_phantom)
    img = np.asarray(Image.open(tiny_phantom.parent / df.path[0]))
    assert img.dtype == np.uint8 and img.ndim == 2
    assert (img[:, :4] < 30).mean() > 0.8  # dark outside the scan field (left margin)
    assert img[30:80, 20:76].std() > 15  # speckle, not a flat fill


def test_no_single_trivial_cue_separates_classes(tmp_path):
    m = phantom.generate(tmp_path, n_benign=60, n_malignant=60, size=64, seed=1)
    df = pd.read_csv(m)
    y = (df.label == "malignant").to_numpy()
    imgs = [np.asarray(Image.open(tmp_path / p), dtype=np.float32) for p in df.path]
    for stat in (np.mean, np.std, lambda a: (a > 200).mean()):
        auc = roc_auc_score(y, [stat(a) for a in imgs])
        assert 0.2 < auc < 0.8  # whole-image statistics give no shortcut
    for feature in phantom.FEATURES:  # nor does any one TI-RADS cue alone (exact, from the tables)
        assert 0.6 < phantom.single_cue_auc(feature) < 0.9


def test_single_cue_auc_matches_sampling():
    rng = np.random.default_rng(0)
    y = rng.random(20000) < 0.3
    comp = [phantom.sample_nodule(rng, int(label), 0.0).composition for label in y]
    order = {"cystic": 0, "spongiform": 1, "mixed": 2, "solid": 3}  # increasing LR of malignancy
    assert abs(roc_auc_score(y, [order[c] for c in comp]) - phantom.single_cue_auc("composition")) < 0.01


def test_overlap_knob_blurs_the_classes():
    sharp = phantom.feature_probs(1, 0.0)["composition"][1]
    blurred = phantom.feature_probs(1, 1.0)["composition"][1]
    assert np.allclose(blurred, phantom.feature_probs(0, 1.0)["composition"][1])
    assert not np.allclose(sharp, phantom.feature_probs(0, 0.0)["composition"][1])


# --- scanner layout ---------------------------------------------------------


def _scanner(tmp_path_factory, name, shortcuts, n=60, size=64, seed=2):
    out = tmp_path_factory.mktemp(name)
    df = pd.read_csv(phantom.generate(out, n_benign=n, n_malignant=n, size=size, seed=seed,
                                      layout="scanner", shortcuts=shortcuts), keep_default_na=False)
    return out, df


@pytest.fixture(scope="module")
def fair(tmp_path_factory):
    return _scanner(tmp_path_factory, "fair", 0.0)


@pytest.fixture(scope="module")
def confounded(tmp_path_factory):
    return _scanner(tmp_path_factory, "confounded", 1.0, n=40)


def _load(folder, rel):
    return np.asarray(Image.open(folder / rel))


def test_scanner_screens_vary_in_aspect_and_field_geometry(fair):
    folder, df = fair
    widths = {_load(folder, p).shape[1] for p in df.path}
    assert widths <= {round(64 * a) for a in screen.ASPECTS} and len(widths) >= 3
    boxes = [json.loads(b) for b in df.field_boxes]
    assert len({tuple(map(tuple, b)) for b in boxes}) > 0.9 * len(df)  # size and position vary
    assert set(df.field_kind) == {"linear", "sector"}


def test_masks_are_in_screen_geometry_inside_the_field_boxes(fair):
    folder, df = fair
    for r in df.itertuples():
        img, mask, field = (_load(folder, p) for p in (r.path, r.mask_path, r.field_mask_path))
        assert mask.shape == field.shape == img.shape[:2]
        in_boxes = np.zeros(mask.shape, bool)
        for y0, x0, y1, x1 in json.loads(r.field_boxes):
            in_boxes[y0:y1, x0:x1] = True
        assert mask.any() and not (mask > 0)[~in_boxes].any() and not (mask > 0)[field == 0].any()
        if r.field_kind == "linear":  # a linear field is exactly its boxes
            assert np.array_equal(field > 0, in_boxes)


def test_sector_field_is_the_drawn_fan_and_black_outside():
    rng = np.random.default_rng(0)
    lay = screen.plan(rng, 200, screen.PRESETS[2], dual=False)
    p = lay.panes[0]
    canvas = np.zeros((lay.H, lay.W), np.float32)
    nodule, fields = np.zeros(canvas.shape, bool), np.zeros(canvas.shape, bool)
    screen.place(canvas, nodule, fields, p, np.ones(p.tissue_shape), np.zeros(p.tissue_shape, bool))
    # Oracle: PIL's pie slice of radius r1 minus the one of radius r0, centred on the apex.
    fan = Image.new("L", (lay.W, lay.H))
    d = ImageDraw.Draw(fan)
    (ay, ax), deg = p.apex, np.degrees(p.alpha)
    d.pieslice([ax - p.r1, ay - p.r1, ax + p.r1, ay + p.r1], 90 - deg, 90 + deg, fill=255)
    d.pieslice([ax - p.r0, ay - p.r0, ax + p.r0, ay + p.r0], 90 - deg, 90 + deg, fill=0)
    fan = np.asarray(fan) > 0
    assert (fan == fields).mean() > 0.99 and (fan ^ fields).sum() < 0.03 * fan.sum()
    assert np.array_equal(canvas > 0, fields)  # tissue inside, black outside


def test_sector_screens_are_black_outside_the_fan(fair):
    folder, df = fair
    dark = []
    for r in df[df.field_kind == "sector"].itertuples():
        img, field = _load(folder, r.path), _load(folder, r.field_mask_path) > 0
        y0, x0, y1, x1 = json.loads(r.field_boxes)[0]
        corners = ~field[y0:y1, x0:x1]
        dark.append((img[y0:y1, x0:x1].max(axis=2)[corners] < 10).mean())
    # only overlays (pane label, depth text, marks) may light the box corners outside the fan
    assert min(dark) > 0.7 and np.mean(dark) > 0.9


def test_dual_panes_have_two_side_by_side_boxes_with_the_nodule_in_each(fair):
    folder, df = fair
    dual = df[df.panes == 2]
    assert 0.1 < len(dual) / len(df) < 0.45  # DUAL_RATE 0.25, 120 screens
    for r in dual.itertuples():
        (a0, b0, a1, b1), (c0, d0, c1, d1) = json.loads(r.field_boxes)
        assert b1 <= d0  # left pane ends before the right one starts
        mask = _load(folder, r.mask_path) > 0
        assert mask[a0:a1, b0:b1].any() and mask[c0:c1, d0:d1].any()


def _rates(df, column_is_on):
    on = column_is_on(df)
    mal = (df.label == "malignant").to_numpy()
    return on[mal].mean(), on[~mal].mean(), fisher_exact([[on[mal].sum(), (~on[mal]).sum()],
                                                          [on[~mal].sum(), (~on[~mal]).sum()]]).pvalue


def test_overlays_are_independent_of_class_without_shortcuts(fair):
    _, df = fair
    for cue in (lambda d: d.calipers.to_numpy() == 1, lambda d: d.category_text.to_numpy() != "",
                lambda d: d.field_kind.to_numpy() == "sector"):
        assert _rates(df, cue)[2] > 0.01  # Fisher exact test: no detectable class dependence


def test_overlays_follow_the_class_with_shortcuts(confounded):
    _, df = confounded
    mal_rate, ben_rate, p = _rates(df, lambda d: d.calipers.to_numpy() == 1)
    assert mal_rate > 0.7 and ben_rate < 0.3 and p < 1e-6
    cat = df[df.category_text != ""]
    assert set(cat[cat.label == "malignant"].category_text) <= {"TR4", "TR5"}
    assert set(cat[cat.label == "benign"].category_text) <= {"TR2", "TR3"}
    assert (cat.label == "malignant").mean() > 0.7
    assert _rates(df, lambda d: d.field_kind.to_numpy() == "sector")[2] < 1e-4


def test_overlay_rates_match_the_stated_rates_at_both_ends():
    rng = np.random.default_rng(0)
    n = 20000
    for s, expect in ((0.0, ((0.25, 0.25), (0.25, 0.25))), (1.0, ((0.1, 0.8), (0, 1)))):
        for label in (0, 1):
            texts = [screen.category_text(rng, label, s) for _ in range(n)]
            shown = np.mean([t != "" for t in texts])
            high = np.mean([t in ("TR4", "TR5") for t in texts if t])
            assert abs(shown - expect[0][label]) < 4 * np.sqrt(0.25 / n)
            assert abs(high - (0.5 if s == 0 else expect[1][label])) < 0.03


def test_whole_screen_statistics_give_no_shortcut_without_shortcuts(fair):
    folder, df = fair
    y = (df.label == "malignant").to_numpy()
    imgs = [_load(folder, p).astype(np.float32) for p in df.path]
    for stat in (np.mean, np.std, lambda a: a.shape[1], lambda a: (a > 200).mean()):
        assert 0.3 < roc_auc_score(y, [stat(a) for a in imgs]) < 0.7


def test_scanner_layout_is_deterministic_by_seed(tmp_path):
    def digest(folder):
        files = sorted(p for sub in ("images", "masks", "fields") for p in (folder / sub).iterdir())
        data = b"".join(p.read_bytes() for p in files) + (folder / "manifest.csv").read_bytes()
        return hashlib.sha256(data).hexdigest()

    kw = dict(n_benign=3, n_malignant=3, size=64, layout="scanner", shortcuts=0.5)
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        phantom.generate(tmp_path / name, seed=seed, **kw)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_simple_layout_reports_its_single_linear_field(tiny_phantom):
    df = pd.read_csv(tiny_phantom)
    r = df.iloc[0]
    field = _load(tiny_phantom.parent, r.field_mask_path) > 0
    (y0, x0, y1, x1), = json.loads(r.field_boxes)
    img = _load(tiny_phantom.parent, r.path)
    assert (r.layout, r.field_kind, r.panes) == ("simple", "linear", 1)
    assert field.sum() == (y1 - y0) * (x1 - x0) and field[y0:y1, x0:x1].all()
    assert img[y0:y1, x0:x1].std() > 15 and (img[:, :x0] < 30).mean() > 0.8


def test_bad_layout_and_shortcuts_are_named(tmp_path):
    with pytest.raises(ValueError, match="layout 'screen'"):
        phantom.generate(tmp_path, n_benign=1, n_malignant=1, layout="screen")
    with pytest.raises(ValueError, match="shortcuts 1.5"):
        phantom.generate(tmp_path, n_benign=1, n_malignant=1, layout="scanner", shortcuts=1.5)
