"""The array-operation largest rectangle of a convex field equals the histogram scan (the oracle),
ties included, and inscribed_box is unchanged by it."""

import cv2
import numpy as np
import pytest

from thyro.image import field
from thyro.image.field import _largest_rect_rows, _largest_rect_scan, inscribed_box


def _convex_masks():
    rng = np.random.default_rng(0)
    out = []
    for _ in range(40):
        h, w = rng.integers(20, 129, 2)
        pts = np.stack([rng.integers(0, w, 8), rng.integers(0, h, 8)], 1).astype(np.int32)
        m = np.zeros((h, w), np.uint8)
        cv2.fillPoly(m, [cv2.convexHull(pts)], 1)
        out.append(m.astype(bool))
    yy, xx = np.mgrid[:96, :128]
    out.append((np.abs(yy - 48) + np.abs(xx - 64) <= 40))            # a diamond: many equal rectangles
    out.append(((yy - 48) ** 2 / 40 ** 2 + (xx - 64) ** 2 / 60 ** 2) <= 1)
    fan = np.zeros((96, 128), np.uint8)
    cv2.ellipse(fan, (64, -20), (110, 110), 90, -35, 35, 1, -1)      # a convex probe's sector
    out.append(fan.astype(bool))
    out.append(np.ones((50, 70), bool))
    out.append(np.zeros((30, 30), bool))
    sq = np.zeros((40, 40), bool)
    sq[5:15, 5:15] = sq[25:35, 5:15] = False
    sq[10:30, 10:30] = True                                          # a square: ties only by position
    out.append(sq)
    return out


@pytest.mark.parametrize("k", range(len(_convex_masks())))
def test_rows_path_equals_the_scan(k):
    m = _convex_masks()[k]
    assert _largest_rect_rows(m) == _largest_rect_scan(m)


def test_a_row_with_a_gap_is_left_to_the_scan():
    m = np.zeros((20, 30), bool)
    m[5:15, 2:10] = m[5:15, 15:28] = True
    assert _largest_rect_rows(m) is None
    assert inscribed_box(m) == (5, 15, 15, 28)


def test_inscribed_box_unchanged(monkeypatch):
    boxes = [inscribed_box(m) for m in _convex_masks()]
    monkeypatch.setattr(field, "_largest_rect_rows", lambda small: None)
    assert boxes == [inscribed_box(m) for m in _convex_masks()]
