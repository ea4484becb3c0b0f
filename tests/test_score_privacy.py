"""Burned-in screen text stays out of overlays when the preset crops to the field."""

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from thyro.data.sources import Item
from thyro.image.geometry import Geometry, model_map_to_crop
from thyro.image.transforms import resolve_preset
from thyro.model.scoring import overlay_image, prepare

FIELD = (60, 80, 220, 300)  # y0, x0, y1, x1 of the scan field on a 240 x 320 screen
MAGENTA = (255, 0, 255)


def _screen(name: str | None) -> bytes:
    """Speckle in FIELD on a black screen; above it a magenta name tag with the patient's name."""
    rng = np.random.default_rng(0)
    y0, x0, y1, x1 = FIELD
    img = np.zeros((240, 320, 3), np.uint8)
    speckle = np.hypot(*(gaussian_filter(rng.normal(size=(y1 - y0, x1 - x0)), 1.5) for _ in range(2)))
    img[y0:y1, x0:x1] = np.clip(speckle / speckle.mean() * 90, 5, 255).astype(np.uint8)[:, :, None]
    im = Image.fromarray(img)
    if name:
        draw = ImageDraw.Draw(im)
        draw.rectangle((10, 8, 200, 40), fill=MAGENTA)
        draw.text((16, 16), name, fill=(0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _overlay(data: bytes, preset) -> np.ndarray:
    row = prepare(Item("screen.png", data=data), preset)[0]
    g = Geometry.from_dict(json.loads(row["geometry"]))
    cam_model = np.zeros((16, 16), np.float32)
    cam_model[6:10, 6:10] = 1  # mostly jet's blue, which magenta stands out from
    cam = model_map_to_crop(cam_model, g, 56)
    return np.asarray(Image.open(io.BytesIO(overlay_image(row["pixels"], cam, preset, g, fmt="png")))), g


def _magenta_ish(rgb: np.ndarray) -> int:
    # grey + jet at alpha 0.45 never has red and blue both high with green low; magenta under it does
    r, g, b = (rgb[:, :, k].astype(int) for k in range(3))
    return int(((r > 100) & (b > 100) & (g < 60)).sum())


def test_no_overlay_pixel_comes_from_the_text_area():
    preset = resolve_preset("field", 64)
    assert preset.field != "none"  # a preset that crops to the field
    with_name, g = _overlay(_screen("DOE^JANE 1970-01-01 MRN 998877"), preset)
    without, _ = _overlay(_screen(None), preset)
    assert _magenta_ish(with_name) == 0
    assert np.array_equal(with_name, without)  # the text changed nothing that is drawn
    y0, x0, y1, x1 = FIELD
    assert g.box == pytest.approx(FIELD, abs=4)  # the crop is the field (found in the image)
    h, w = with_name.shape[:2]
    assert max(h, w) == 64 and w / h == pytest.approx((x1 - x0) / (y1 - y0), abs=0.05)


def test_without_the_field_crop_the_text_shows():
    # the check above can fail: a preset that keeps the whole screen draws the name
    rgb, _ = _overlay(_screen("DOE^JANE 1970-01-01 MRN 998877"), resolve_preset("study", 64))
    assert _magenta_ish(rgb) > 0


def test_redaction_without_a_map_location_fails_when_the_config_loads(tmp_path):
    from thyro.config import ConfigError, load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("score:\n  redact_paths: true\n")
    with pytest.raises(ConfigError, match="path_map_uri") as e:
        load_config(cfg)
    assert str(cfg) in str(e.value)  # names the file
    assert load_config(None, [{"score": {"redact_paths": True, "path_map_uri": "s3://vault/maps"}}]).score.redact_paths
