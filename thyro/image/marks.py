"""Annotation marks inside the scan field: find them and paint them out.

Clinicians place calipers (+ and x marks, dotted lines) and measurement text on
the nodules they worry about, so a model can learn the marks instead of the
tissue. Marks are drawn, not imaged: crisp 1-3 px strokes at (near) full white,
or coloured (yellow, green, cyan) where B-mode is grey. Tissue is blurred by the
imaging system: speckle grains and punctate calcifications, however bright, are
as wide as the point-spread function, so a 5x5 median keeps most of their
brightness while it removes a stroke completely.
"""

from __future__ import annotations

import cv2
import numpy as np

SATURATED = 235  # grey level; marks are drawn at or near full white
STRONG_CONTRAST = 110  # grey levels a stroke stands above its 5x5 median (speckle grains: 99.9% below 128)
WEAK_CONTRAST = 50  # ... where it crosses brighter tissue, if joined to a strong stroke pixel
CHROMA = 60  # max(R, G, B) - min(R, G, B); B-mode is grey (chroma ~0)
INPAINT_RADIUS = 3


def mark_mask(img: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask of annotation marks: crisp near-white strokes and coloured pixels."""
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    contrast = cv2.subtract(grey, cv2.medianBlur(grey, 5))
    bright = grey >= SATURATED
    # Hysteresis: a stroke crossing a bright speckle grain loses contrast there, while a
    # saturated grain alone rarely reaches the strong level; keep weak stroke pixels only
    # when they touch a strong one.
    weak = (bright & (contrast >= WEAK_CONTRAST)).astype(np.uint8)
    n, labels = cv2.connectedComponents(weak, connectivity=8)
    seeded = np.zeros(n, bool)
    seeded[labels[bright & (contrast >= STRONG_CONTRAST)]] = True
    seeded[0] = False
    stroke = seeded[labels]
    r, g, b = cv2.split(img)
    chroma = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b)) >= CHROMA
    marks = (stroke | chroma).astype(np.uint8)
    # Where strokes cross (the centre of a "+") the median is bright too; closing the
    # gap and a one-pixel dilation also take the anti-aliased edges.
    marks = cv2.morphologyEx(marks, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    return cv2.dilate(marks, np.ones((3, 3), np.uint8)).astype(bool)


def suppress_marks(img: np.ndarray, field_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cleaned image, marks mask): marks inside `field_mask` inpainted (Telea); nothing else changes.

    `img` is (H, W, 3) uint8 RGB; `field_mask` a boolean (H, W) mask, None for
    the whole image.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"mark suppression needs an (H, W, 3) uint8 image, got shape {img.shape} dtype {img.dtype}")
    img = np.ascontiguousarray(img)
    marks = mark_mask(img)
    if field_mask is not None:
        field_mask = np.asarray(field_mask, dtype=bool)
        if field_mask.shape != img.shape[:2]:
            raise ValueError(f"field mask of shape {field_mask.shape} does not match the image's {img.shape[:2]}")
        marks &= field_mask
    if not marks.any():
        return img.copy(), marks
    # Inpaint only the marks' bounding box (plus the radius it reads from): marks cluster
    # around the nodule, and Telea's cost grows with the area it is given.
    ys, xs = np.nonzero(marks)
    pad = INPAINT_RADIUS + 2
    y0, y1 = max(0, ys.min() - pad), min(img.shape[0], ys.max() + 1 + pad)
    x0, x1 = max(0, xs.min() - pad), min(img.shape[1], xs.max() + 1 + pad)
    crop = marks[y0:y1, x0:x1]
    painted = cv2.inpaint(img[y0:y1, x0:x1], crop.astype(np.uint8), INPAINT_RADIUS, cv2.INPAINT_TELEA)
    cleaned = img.copy()
    # cv2.inpaint leaves unmasked pixels as they were; copying only masked ones makes the promise explicit.
    cleaned[y0:y1, x0:x1][crop] = painted[crop]
    return cleaned, marks
