"""Two ultrasound views: nothing from outside the scan field, grey stays grey, shapes and sizes."""

import numpy as np
import pytest
import torch

from thyro.image.transforms import PRESETS
from thyro.image.views import TwoViews

NO_JITTER = dict(intensity=0.0, speckle=0.0, blur_p=0.0)


def drawn_fan(h=120, w=160, inside=60, outside=200):
    """A fan-shaped field (a disc sector) of one grey value; everything else another value."""
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy + 20, xx - w / 2)
    angle = np.degrees(np.arctan2(xx - w / 2, yy + 20))
    mask = (r > 30) & (r < h + 10) & (np.abs(angle) < 40)
    img = np.where(mask, inside, outside).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2), mask


@pytest.mark.parametrize("resize", ["letterbox", "squash"])
def test_views_never_show_what_lies_outside_the_field(resize):
    torch.manual_seed(0)
    img, mask = drawn_fan()
    preset = {**PRESETS["field"].to_dict(), "resize": resize}
    tv = TwoViews(48, preset, crop_scale=0.3, rotation_degrees=15, **NO_JITTER)
    for _ in range(15):
        for v in tv(img, mask):
            grey = tv.denormalize(v) * 255
            # inside is 60, black outside / padding; interpolation stays between them, never near 200
            assert grey.max().item() <= 60 + 0.5
            assert grey.max().item() >= 60 - 0.5   # the field itself is there


def test_views_are_grey_and_keep_the_channel_mean():
    torch.manual_seed(0)
    img = np.zeros((64, 64, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 30, 90, 150      # grey value: their mean, 90
    tv = TwoViews(32, PRESETS["field"], rotation_degrees=10, **NO_JITTER)
    v1, v2 = tv(img)
    for v in (v1, v2):
        d = tv.denormalize(v)
        assert torch.allclose(d[0], d[1], atol=1e-5) and torch.allclose(d[1], d[2], atol=1e-5)
        assert d[0, 16, 16].item() * 255 == pytest.approx(90, abs=0.5)


def test_views_with_jitter_stay_grey_and_finite():
    torch.manual_seed(1)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    tv = TwoViews(40, PRESETS["robust"])
    v1, v2 = tv(img)
    assert v1.shape == v2.shape == (3, 40, 40) and v1.dtype == torch.float32
    d = tv.denormalize(v1)
    assert torch.isfinite(d).all() and torch.allclose(d[0], d[2], atol=1e-5)
    assert not torch.equal(v1, v2)   # two different augmentations


def test_grey_input_and_empty_field():
    tv = TwoViews(16, PRESETS["field"])
    v1, _ = tv(np.full((30, 40), 128, np.uint8))
    assert v1.shape == (3, 16, 16)
    with pytest.raises(ValueError, match="empty"):
        tv(np.zeros((30, 40), np.uint8), np.zeros((30, 40), bool))
    with pytest.raises(ValueError, match="does not match"):
        tv(np.zeros((30, 40), np.uint8), np.ones((30, 41), bool))


def test_from_config_follows_the_pretrain_section():
    from thyro.config import load_config

    cfg = load_config(None, [{"pretrain": {"image_size": 40, "preset": "robust", "speckle": 0.05}}]).pretrain
    tv = TwoViews.from_config(cfg)
    assert tv.size == 40 and tv.preset.resize == "letterbox" and tv.strengths.speckle == 0.05
    assert tv(np.full((50, 60), 100, np.uint8))[0].shape == (3, 40, 40)
