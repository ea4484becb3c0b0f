import hashlib

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import roc_auc_score

from thyro import phantom


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
