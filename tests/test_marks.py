"""Annotation marks on drawn speckle: found and painted out; tissue left alone."""

import csv
import os

import cv2
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from thyro.image.marks import mark_mask, suppress_marks

S = 256


def _speckle(seed=0, mean=90.0):
    """Rayleigh speckle; at this mean ~0.5% of pixels are saturated bright grains."""
    rng = np.random.default_rng(seed)
    a, b = (gaussian_filter(rng.normal(size=(S, S)), 1.5) for _ in range(2))
    r = np.hypot(a, b)
    grey = np.clip(r * (mean / r.mean()), 0, 255)
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


def _calcification(img, y=200, x=200):
    """A punctate calcification: bright, saturated at its centre, but blurred by the imaging."""
    yy, xx = np.mgrid[0:S, 0:S]
    blob = 220 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 2.5 ** 2))
    return np.clip(img + blob[..., None], 0, 255).astype(np.uint8)


def _draw(img, drawer, colour):
    m = np.zeros((S, S), np.uint8)
    drawer(m)
    img[m > 0] = colour
    return m > 0


MARKS = {
    "plus": (lambda m: (cv2.line(m, (40, 50), (56, 50), 1, 1), cv2.line(m, (48, 42), (48, 58), 1, 1)), (255,) * 3),
    "x": (lambda m: (cv2.line(m, (90, 42), (104, 56), 1, 1), cv2.line(m, (90, 56), (104, 42), 1, 1)), (255,) * 3),
    "dotted": (lambda m: [cv2.rectangle(m, (x, 120), (x + 1, 121), 1, -1) for x in range(30, 150, 6)], (255,) * 3),
    "yellow": (lambda m: cv2.line(m, (150, 60), (220, 90), 1, 2), (255, 255, 0)),
    "green": (lambda m: cv2.circle(m, (100, 180), 6, 1, 1), (0, 255, 0)),
    "cyan": (lambda m: cv2.putText(m, "12.3mm", (150, 150), cv2.FONT_HERSHEY_PLAIN, 1.0, 1, 1), (0, 255, 255)),
    "text": (lambda m: cv2.putText(m, "D1 8.4", (20, 240), cv2.FONT_HERSHEY_PLAIN, 1.0, 1, 1), (255,) * 3),
}


@pytest.mark.parametrize("name", sorted(MARKS))
def test_mark_is_found_and_painted_out(name):
    tissue = _speckle()
    img = tissue.copy()
    drawn = _draw(img, *MARKS[name])
    cleaned, marks = suppress_marks(img)
    assert (marks & drawn).sum() >= 0.9 * drawn.sum()
    # Residual contrast, per channel: the painted pixels have the tissue's level, not the mark's.
    base = tissue[drawn].astype(float).mean(axis=0)
    drawn_contrast = np.abs(img[drawn].mean(axis=0) - base).max()
    residual = np.abs(cleaned[drawn].mean(axis=0) - base).max()
    assert residual < 0.15 * drawn_contrast


def test_tissue_with_bright_grains_and_a_calcification_is_left_alone():
    img = _calcification(_speckle(seed=1))
    assert (img[..., 0] >= 235).mean() > 0.003  # the speckle does have saturated grains
    cleaned, marks = suppress_marks(img)
    assert (cleaned != img).any(axis=2).mean() < 0.01
    assert not marks[195:206, 195:206].any()  # the calcification


def test_pixels_outside_the_field_never_change():
    img = _speckle()
    for drawer, colour in MARKS.values():
        _draw(img, drawer, colour)
    field = np.zeros((S, S), bool)
    field[:, :128] = True
    cleaned, marks = suppress_marks(img, field)
    assert np.array_equal(cleaned[~field], img[~field]) and not marks[~field].any()
    assert marks[field].any() and (cleaned[field] != img[field]).any()


def test_mismatched_field_mask_is_an_error():
    with pytest.raises(ValueError, match="does not match"):
        suppress_marks(_speckle(), np.ones((10, 10), bool))


# --- marks that are not white: a screen resampled (BUSI's 256 px copy) draws its calipers at 180-230 ---

def _bmode(seed=0, size=S, mean=150.0):
    """Log-compressed speckle, as a scanner displays it: 2.5 grey levels per dB, local sd ~14 (BUSI: 4-18)."""
    rng = np.random.default_rng(seed)
    a, b = (gaussian_filter(rng.normal(size=(size, size)), size / S) for _ in range(2))  # grain grows with the image
    r = np.hypot(a, b)
    grey = np.clip(mean + 2.5 * 20 * np.log10(r / r.mean() + 1e-6), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _cross(m, cx, cy, arm, shape, width=1):
    """A caliper as scanners draw it: '+' or 'x', 2 * arm + 1 px across."""
    if shape == "plus":
        cv2.line(m, (cx - arm, cy), (cx + arm, cy), 1, width)
        cv2.line(m, (cx, cy - arm), (cx, cy + arm), 1, width)
    else:
        cv2.line(m, (cx - arm, cy - arm), (cx + arm, cy + arm), 1, width)
        cv2.line(m, (cx - arm, cy + arm), (cx + arm, cy - arm), 1, width)


@pytest.mark.parametrize("shape", ["plus", "x"])
@pytest.mark.parametrize("level", [190, 205, 220])
def test_grey_caliper_on_bmode_is_found(level, shape):
    # BUSI's calipers: 9 px across, 1-px strokes, grey 215-229, on tissue whose brightest grains reach ~190
    img = _bmode(seed=level)
    m = np.zeros((S, S), np.uint8)
    for cx, cy in ((60, 60), (128, 128), (200, 90)):
        _cross(m, cx, cy, 4, shape)
    img[m > 0] = level
    assert mark_mask(img)[m > 0].mean() >= 0.95


@pytest.mark.parametrize("diameter", [3, 5, 9])
def test_bright_dot_of_a_calipers_grey_is_left_alone(diameter):
    # A calcification: as bright as a caliper and no larger, but round; it has no arms.
    img = _bmode(seed=diameter)
    m = np.zeros((S, S), np.uint8)
    for cx, cy in ((60, 60), (128, 128), (200, 90)):
        cv2.circle(m, (cx, cy), diameter // 2, 1, -1)
    img[m > 0] = 220
    near = cv2.dilate(m, np.ones((7, 7), np.uint8)) > 0
    assert not mark_mask(img)[near].any()


def test_caliper_at_twice_the_scale_is_found():
    # The same screen at 512 px: tissue grain, strokes (2 px) and crosses (17 px) twice as large.
    img = _bmode(seed=3, size=2 * S)
    m = np.zeros((2 * S, 2 * S), np.uint8)
    for cx, cy in ((120, 120), (256, 300), (400, 180)):
        _cross(m, cx, cy, 8, "plus", width=2)
    img[m > 0] = 210
    assert mark_mask(img)[m > 0].mean() >= 0.95


def test_dotted_line_between_two_calipers_is_found():
    img = _bmode(seed=4)
    m = np.zeros((S, S), np.uint8)
    _cross(m, 50, 140, 4, "plus")
    _cross(m, 200, 100, 4, "plus")
    dots = np.zeros((S, S), np.uint8)
    for t in np.linspace(0, 1, 40)[3:-3]:  # a 1-px dot every ~4 px, as BUSI's and the phantom's
        dots[int(round(140 - 40 * t)), int(round(50 + 150 * t))] = 1
    img[(m | dots) > 0] = 205
    assert mark_mask(img)[dots > 0].mean() >= 0.9


def test_grey_text_line_is_found():
    img = _bmode(seed=5)
    m = np.zeros((S, S), np.uint8)
    cv2.putText(m, "RT AXILLA 12", (40, 180), cv2.FONT_HERSHEY_PLAIN, 0.9, 1, 1)
    img[m > 0] = 215
    assert mark_mask(img)[m > 0].mean() >= 0.9


BUSI = "/work/shared/data/busi"  # as tests/test_field.py
REFERENCE = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "marks_busi_reference.csv")


@pytest.mark.skipif(not os.path.isdir(BUSI), reason="BUSI not present")
@pytest.mark.parametrize("name", ["benign/benign (281).png", "malignant/malignant (114).png",
                                  "benign/benign (120).png", "malignant/malignant (154).png"])
def test_busi_calipers_are_found_and_tissue_left_alone(name):
    # Oracle: the hand-made reference (caliper centres; 120 and 154 have no marks, 154 has
    # bright microcalcification-like spots).
    with open(REFERENCE, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["file"] == name]
    img = cv2.imread(os.path.join(BUSI, name), cv2.IMREAD_COLOR)[..., ::-1].copy()
    mask = mark_mask(img)
    yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    for r in rows:
        if r["kind"] in ("plus", "bright"):
            close = np.hypot(yy - float(r["y0"]), xx - float(r["x0"])) <= 3
            assert mask[close].any() == (r["kind"] == "plus"), (r["kind"], r["x0"], r["y0"])
    if not any(r["kind"] == "plus" for r in rows):
        mask[:12, :12] = False  # BUSI's probe icon
        assert mask.mean() < 0.001
