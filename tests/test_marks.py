"""Annotation marks on drawn speckle: found and painted out; tissue left alone."""

import cv2
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from thyro.image.marks import suppress_marks

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
