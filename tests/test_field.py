"""Scan-field detection on drawn screens with known fields, and on a few BUSI scans."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from thyro.image.field import Field, detect_fields, field_from_box, union_mask

H, W = 600, 800
BUSI = Path("/work/shared/data/busi")


def _speckle(rng, shape, mean=90.0):
    """Rayleigh speckle: magnitude of two smoothed gaussian fields."""
    a, b = (gaussian_filter(rng.normal(size=shape), 1.5) for _ in range(2))
    r = np.hypot(a, b)
    return r * (mean / r.mean())


def _fan(box, shape):
    """A convex-probe fan: annular sector whose bottom corners touch the box's bottom corners."""
    y0, x0, y1, x1 = box
    cx, apex = (x0 + x1 - 1) / 2, y0 - 0.25 * (y1 - y0)
    half = np.arcsin((x1 - x0) / 2 / (y1 - apex))
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    r, th = np.hypot(yy - apex, xx - cx), np.arctan2(xx - cx, yy - apex)
    return (r >= y0 - apex) & (r <= y1 - apex) & (np.abs(th) <= half) & (yy < y1)


def _screen(panes, kind="linear", seed=0, shape=(H, W)):
    """Black screen with speckle fields (weaker with depth); returns image and true masks."""
    rng = np.random.default_rng(seed)
    img = np.zeros(shape + (3,), np.uint8)
    masks = []
    for y0, x0, y1, x1 in panes:
        m = np.zeros(shape, bool)
        if kind == "linear":
            m[y0:y1, x0:x1] = True
        else:
            m = _fan((y0, x0, y1, x1), shape)
        tex = np.clip(_speckle(rng, shape) * np.linspace(1.2, 0.5, shape[0])[:, None], 0, 255).astype(np.uint8)
        img[m] = tex[m][:, None]
        masks.append(m)
    return img, masks


def _furniture(img, box, text=True):
    """What a scanner draws outside the field: text, depth scale, grey bar, body marker, logo."""
    img = img.copy()
    h, w = img.shape[:2]
    y0, x0, y1, x1 = box
    if text:
        cv2.putText(img, "THYROID L TRANSV", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255,) * 3, 2, cv2.LINE_AA)
        cv2.putText(img, "MI 0.9 TIS 0.4", (w - 190, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (220,) * 3, 1)
        for i, s in enumerate(["Gain 52", "DR 66", "12MHz", "FPS 31"]):
            cv2.putText(img, s, (8, 320 + 26 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (230,) * 3, 1, cv2.LINE_AA)
        cv2.putText(img, "2024-05-12 10:31", (w - 230, h - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255,) * 3, 1)
    # depth scale 6 px right of the field, ticks and numbers
    cv2.line(img, (x1 + 6, y0), (x1 + 6, y1 - 1), (200,) * 3, 1)
    for k, yy in enumerate(range(y0, y1, (y1 - y0) // 8)):
        cv2.line(img, (x1 + 6, yy), (x1 + 14, yy), (200,) * 3, 2)
        cv2.putText(img, str(k), (x1 + 17, yy + 5), cv2.FONT_HERSHEY_PLAIN, 0.9, (200,) * 3, 1)
    img[y0 + 20:y0 + 220, 40:58] = np.linspace(255, 0, 200).astype(np.uint8)[:, None, None]  # grey bar
    cv2.ellipse(img, (60, h - 70), (35, 45), 0, 0, 360, (180,) * 3, 2)  # body marker
    cv2.rectangle(img, (40, h - 80), (80, h - 72), (255,) * 3, -1)  # its probe bar
    cv2.rectangle(img, (w - 80, 50), (w - 20, 90), (150,) * 3, -1)  # logo block
    return img


def _true_box(m):
    ys, xs = np.nonzero(m)
    return ys.min(), xs.min(), ys.max() + 1, xs.max() + 1


def _assert_matches(fields, masks, shape, kind, min_iou):
    assert len(fields) == len(masks)
    for f, m in zip(fields, masks):
        tol = 0.02 * np.array([shape[0], shape[1], shape[0], shape[1]])
        assert np.all(np.abs(np.array(f.box) - _true_box(m)) <= tol), (f.box, _true_box(m))
        got = f.mask(shape)
        assert (got & m).sum() / (got | m).sum() >= min_iou
        assert f.kind == kind and f.source == "image"
        assert f.area_frac == pytest.approx(got.mean())


LINEAR = (60, 120, 540, 680)


def test_linear_field_with_screen_furniture_outside():
    img, masks = _screen([LINEAR])
    fields = detect_fields(_furniture(img, LINEAR))
    _assert_matches(fields, masks, (H, W), "linear", 0.97)


@pytest.mark.parametrize("kind", ["linear", "sector"])
def test_text_outside_the_field_does_not_move_it(kind):
    img, _ = _screen([LINEAR], kind)
    plain, texted = detect_fields(_furniture(img, LINEAR, text=False)), detect_fields(_furniture(img, LINEAR))
    assert plain == texted  # frozen dataclasses: boxes, polygons, kinds, areas all equal
    assert np.array_equal(union_mask(plain, (H, W)), union_mask(texted, (H, W)))


def test_sector_fan():
    img, masks = _screen([LINEAR], "sector")
    fields = detect_fields(_furniture(img, LINEAR))
    # The hull also covers the thin lens under the fan's concave top arc.
    _assert_matches(fields, masks, (H, W), "sector", 0.93)


@pytest.mark.parametrize("kind", ["linear", "sector"])
def test_dual_panes_left_to_right(kind):
    panes = [(60, 20, 540, 390), (60, 410, 540, 780)]
    img, masks = _screen(panes, kind)
    _assert_matches(detect_fields(img), masks, (H, W), kind, 0.93)


@pytest.mark.parametrize("kind", ["linear", "sector"])
def test_quad_panes_in_reading_order(kind):
    panes = [(20, 20, 290, 390), (20, 410, 290, 780), (310, 20, 580, 390), (310, 410, 580, 780)]
    img, masks = _screen(panes, kind)
    _assert_matches(detect_fields(img), masks, (H, W), kind, 0.93)  # TL, TR, BL, BR


def test_already_cropped_scan_is_one_full_field():
    img, masks = _screen([(0, 0, 256, 256)], shape=(256, 256))
    (f,) = detect_fields(img)
    assert f.box == (0, 0, 256, 256) and f.kind == "linear" and f.mask((256, 256)).all()


def test_dark_cyst_reaching_the_bottom_stays_inside_the_field():
    img, masks = _screen([LINEAR])
    cv2.ellipse(img, (400, 540), (60, 80), 0, 0, 360, (0, 0, 0), -1)  # anechoic, open to the border below
    _assert_matches(detect_fields(img), masks, (H, W), "linear", 0.97)


def test_black_screen_falls_back_to_the_whole_image():
    (f,) = detect_fields(np.zeros((120, 160, 3), np.uint8))
    assert f.source == "fallback" and f.box == (0, 0, 120, 160) and f.mask((120, 160)).all()


def test_full_resolution_screen():
    box = (90, 300, 1000, 1500)
    img, masks = _screen([box], shape=(1080, 1920))
    _assert_matches(detect_fields(_furniture(img, box)), masks, (1080, 1920), "linear", 0.97)


def test_field_from_box_is_the_box():
    f = field_from_box((10, 20, 50, 90), (100, 120))
    m = f.mask((100, 120))
    assert isinstance(f, Field) and f.source == "dicom" and f.kind == "linear"
    assert m.sum() == 40 * 70 and m[10:50, 20:90].all()
    assert f.area_frac == pytest.approx(40 * 70 / (100 * 120))


def test_field_from_box_outside_the_image_is_an_error():
    with pytest.raises(ValueError, match="outside an image of 100x120"):
        field_from_box((10, 20, 150, 90), (100, 120))


def test_bad_image_is_an_error():
    with pytest.raises(ValueError, match="uint8"):
        detect_fields(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        detect_fields(np.zeros((10, 10, 4), np.uint8))


@pytest.mark.skipif(not BUSI.is_dir(), reason="BUSI not present")
def test_busi_scans_are_mostly_field():
    # Already-cropped breast scans: the field is (nearly) the whole image.
    for name in ["benign/benign (1).png", "benign/benign (10).png", "malignant/malignant (97).png",
                 "malignant/malignant (99).png"]:
        img = cv2.cvtColor(cv2.imread(str(BUSI / name)), cv2.COLOR_BGR2RGB)
        fields = detect_fields(img)
        assert len(fields) == 1 and fields[0].source == "image", name
        assert fields[0].area_frac >= 0.8, name


def test_histogram_percentile_is_numpys():
    """The working copy's background level: numpy's linear percentile, the same float, from a histogram."""
    from thyro.image.field import percentile_u8

    rng = np.random.default_rng(11)
    for _ in range(2000):
        h, w = rng.integers(1, 200, 2)
        a = rng.integers(0, rng.integers(1, 257), (h, w)).astype(np.uint8)
        a[: rng.integers(0, h + 1)] = rng.integers(0, 3)  # a dark border of some height, as screens have
        for q in (0.0, 0.5, 1.0, 37.3, 50.0, 99.5, 100.0):
            assert percentile_u8(a, q) == np.percentile(a, q), (a.shape, q)
