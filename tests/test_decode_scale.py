"""JPEGs decoded at the size the model needs (DCT-domain 1/2, 1/4, 1/8): the model input moves less
than a stated tolerance, and every box stays in the original image's coordinates."""

import io
import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from thyro.data.decode import decode_image, jpeg_scale
from thyro.data.sources import Item
from thyro.image.transforms import resolve_preset
from thyro.model.scoring import prepare

# Tolerances, in the model's normalised input units (one grey level is ~0.017) and in probability.
INPUT_MEAN_ABS = 0.03
# A crop box on the reduced grid lands up to half a reduced pixel off the full one: on speckle that
# alone moves the input by ~3 grey levels on average.
CROP_MEAN_ABS = 0.06
PROB_ABS = 0.02
BOX_FRAC = 0.02  # the field detector's own tolerance (tests/test_field.py): 2% of the side


def _jpeg(img: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    img.convert("RGB").save(b, "JPEG", quality=90, **kw)
    return b.getvalue()


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    """Scanner-screen phantoms (640x480-ish and 1280x960-ish) as JPEG, with their true field boxes."""
    from thyro.data import phantom

    out = {}
    for size, n in ((480, 4), (960, 3)):
        d = tmp_path_factory.mktemp(f"screens{size}")
        man = pd.read_csv(phantom.generate(d, n_benign=n - 1, n_malignant=1, size=size, seed=5, layout="scanner"))
        out[size] = [(_jpeg(Image.open(os.path.join(d, p))), json.loads(b)) for p, b in
                     zip(man.path, man.field_boxes)]
    return out


def test_jpeg_scale_is_the_largest_that_keeps_both_sides():
    assert jpeg_scale(480, 640, 192) == 2       # 240 >= 192, 120 < 192
    assert jpeg_scale(768, 1024, 192) == 4      # 192 >= 192
    assert jpeg_scale(3000, 4000, 192) == 8
    assert jpeg_scale(480, 640, 256) == 1
    assert jpeg_scale(480, 640, 192, min_long_side=512) == 1   # 320 < 512
    assert jpeg_scale(960, 1280, 192, min_long_side=512) == 2
    assert jpeg_scale(480, 640, None) == 1


def test_reduced_decode_reports_the_full_shape_png_never_reduces():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (480, 640), np.uint8))
    d = decode_image(_jpeg(img), "a.jpg", min_side=192)
    assert d.frames[0][1].shape == (240, 320, 3) and d.full_shape == (480, 640)
    assert decode_image(_jpeg(img), "a.jpg").full_shape is None
    png = io.BytesIO()
    img.save(png, "PNG")
    p = decode_image(png.getvalue(), "a.png", min_side=16)
    assert p.frames[0][1].shape == (480, 640, 3) and p.full_shape is None
    # EXIF orientation 6 (rotate 90): the full shape is the upright picture's
    exif = Image.Exif()
    exif[0x0112] = 6
    r = decode_image(_jpeg(img, exif=exif), "r.jpg", min_side=192)
    assert r.frames[0][1].shape == (320, 240, 3) and r.full_shape == (640, 480)


def test_reduced_jpeg_moves_the_study_input_and_probability_little(screens, tiny_run):
    """The tiny run's study preset (64 px): 640x480 screens decode at 1/4 (120 px >= 1.5 x 64)."""
    import torch

    from thyro.model.predictor import Predictor

    pred = Predictor(tiny_run)
    p = pred.preset
    assert p.field == "none"
    for data, _ in screens[480]:
        item = Item("s.jpg", data)
        red, full = prepare(item, p)[0], prepare(item, p, reduce=False)[0]
        assert red["status"] == full["status"] == "ok"
        assert np.abs(red["pixels"] - full["pixels"]).mean() < INPUT_MEAN_ABS
        # geometry in the original screen: the whole image, its own size
        assert json.loads(red["geometry"])["box"] == json.loads(full["geometry"])["box"] == [0, 0, 480, 640] \
            or json.loads(red["geometry"]) == json.loads(full["geometry"])
        assert (red["height"], red["width"]) == (full["height"], full["width"])
        out = pred.predict_tensor(torch.from_numpy(np.stack([red["pixels"], full["pixels"]])))
        assert abs(out.prob_malignant[0] - out.prob_malignant[1]) < PROB_ABS


def test_field_preset_decodes_reduced_only_when_large_and_keeps_original_boxes(screens):
    p = resolve_preset("field", 128)
    for size, (data, true_boxes) in [(s, x) for s in (480, 960) for x in screens[s]]:
        d = decode_image(data, "s.jpg", min_side=192, min_long_side=512)
        H = Image.open(io.BytesIO(data)).height
        assert (d.full_shape is not None) == (size == 960)  # 640 px screens stay whole for the detector
        item = Item("s.jpg", data)
        red, full = prepare(item, p)[0], prepare(item, p, reduce=False)[0]
        gr, gf = json.loads(red["geometry"]), json.loads(full["geometry"])
        assert gr["shape"] == gf["shape"] == [red["height"], red["width"]] and red["height"] == H
        assert np.abs(np.subtract(gr["box"], gf["box"])).max() <= BOX_FRAC * H
        # the crop lies in the true field (inscribed: inside it, up to the tolerance)
        assert any(all(b0 - BOX_FRAC * H <= g for b0, g in zip(tb[:2], gr["box"][:2])) and
                   all(g <= b1 + BOX_FRAC * H for b1, g in zip(tb[2:], gr["box"][2:])) for tb in true_boxes)
        # The decode itself, apart from where the detector put the box: the full path's crop taken
        # from the reduced image (box scaled) makes the same model input, up to the tolerance. (Whole
        # inputs differ more: a box a few px off shifts the speckle under every pixel.)
        if d.full_shape is not None:
            from thyro.image.transforms import eval_tensor

            small, big = d.frames[0][1], decode_image(data, "s.jpg").frames[0][1]
            k = small.shape[0] / big.shape[0]
            y0, x0, y1, x1 = gf["box"]
            a = eval_tensor(small[round(y0 * k):round(y1 * k), round(x0 * k):round(x1 * k)], p)
            b = eval_tensor(big[y0:y1, x0:x1], p)
            assert float((a - b).abs().mean()) < CROP_MEAN_ABS
