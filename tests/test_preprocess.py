"""The preset's deterministic part: scan-field crop, black outside the field, letterbox, and the
geometry that puts model-space maps back over the original screen."""

import cv2
import numpy as np
import pytest

from thyro.image.geometry import Geometry, crop_map_to_original, fit, model_map_to_crop, original_mask_to_model
from thyro.image.preprocess import crop_field, crop_one
from thyro.image.transforms import eval_tensor, resolve_preset

from test_field import _fan, _furniture, _screen

BOX = (80, 150, 520, 690)  # y0, x0, y1, x1 of the field on a 600 x 800 screen


@pytest.mark.parametrize("kind", ["linear", "sector"])
def test_text_outside_the_field_does_not_change_the_model_input_by_one_pixel(kind):
    img, _ = _screen([BOX], kind)
    p = resolve_preset("field-marks", 128)
    clean = eval_tensor(crop_one(img, p).image, p)
    busy = eval_tensor(crop_one(_furniture(img, BOX), p).image, p)
    assert np.array_equal(clean.numpy(), busy.numpy())


def test_sector_corners_are_black_and_the_crop_is_the_field_box():
    img, (mask,) = _screen([BOX], "sector")
    img = _furniture(img, BOX)
    c = crop_one(img, resolve_preset("field", 128, field="auto"))  # the field's box
    y0, x0, y1, x1 = c.box
    assert all(abs(a - b) <= 0.02 * 800 for a, b in zip(c.box, BOX))
    outside = ~c.field_mask
    assert outside.any() and c.image[outside].max() == 0  # nothing from beside the fan survives
    assert np.array_equal(c.image[c.field_mask], img[y0:y1, x0:x1][c.field_mask])


def test_letterbox_keeps_the_aspect_and_squash_does_not():
    assert fit(100, 200, 128, "letterbox") == (32, 0, 96, 128)  # by hand: 64 x 128, centred
    assert fit(100, 200, 128, "squash") == (0, 0, 128, 128)
    img = np.zeros((100, 200, 3), np.uint8)
    cv2.circle(img, (100, 50), 30, (255, 255, 255), -1)
    x = eval_tensor(img, resolve_preset("field", 128, field="none"))[0].numpy()
    ys, xs = np.nonzero(x > 0)
    assert abs((ys.max() - ys.min()) - (xs.max() - xs.min())) <= 1  # still a circle


def test_a_map_goes_back_to_where_it_came_from():
    # A 400 x 600 crop at (50, 100) of a 500 x 800 image, letterboxed onto 120 px: inner = (20, 0, 100, 120).
    g = Geometry(shape=(500, 800), box=(50, 100, 450, 700), size=120, inner=fit(400, 600, 120, "letterbox"))
    assert g.inner == (20, 0, 100, 120)
    m = np.zeros((120, 120), np.float32)
    m[40:60, 30:60] = 1  # model pixels -> crop rows (40-20)*5 .. (60-20)*5, cols 30*5 .. 60*5
    crop = model_map_to_crop(m, g)
    assert crop.shape == (400, 600)
    full = crop_map_to_original(crop, g)
    ys, xs = np.nonzero(full > 0.5)
    assert abs(ys.min() - (50 + 100)) <= 3 and abs(ys.max() - (50 + 200)) <= 3
    assert abs(xs.min() - (100 + 150)) <= 3 and abs(xs.max() - (100 + 300)) <= 3
    # and a field mask of the original lands on the model input, False on the padding
    field = np.zeros((500, 800), bool)
    field[50:450, 100:700] = True
    on_input = original_mask_to_model(field, g)
    assert on_input[20:100].all() and not on_input[:20].any() and not on_input[100:].any()


def test_each_pane_is_its_own_crop_and_largest_picks_one():
    img, _ = _screen([(100, 20, 500, 380), (100, 420, 500, 780)], "linear")
    each = crop_field(img, resolve_preset("field", 96, panes="each"))
    assert [c.pane for c in each] == [0, 1] and each[0].box[3] <= 400 <= each[1].box[1]
    both = crop_field(img, resolve_preset("field", 96, panes="all"))
    assert len(both) == 1 and both[0].box[1] < 40 and both[0].box[3] > 760


def test_dicom_regions_give_the_field_instead_of_the_image():
    from thyro.data.decode import UltrasoundRegion

    img, _ = _screen([BOX], "linear")
    region = UltrasoundRegion(box=(100, 200, 400, 600), data_type="tissue", data_type_code=1, spatial_format=1,
                              mm_per_pixel_x=0.1, mm_per_pixel_y=0.1)
    colour = UltrasoundRegion(box=(0, 0, 50, 50), data_type="color_flow", data_type_code=2, spatial_format=1,
                              mm_per_pixel_x=None, mm_per_pixel_y=None)
    c = crop_one(img, resolve_preset("field", 96), [colour, region])
    assert c.box == (100, 200, 400, 600) and c.field_source == "dicom"


def test_inscribed_crop_shows_no_fan_outline():
    img, (mask,) = _screen([BOX], "sector")
    c = crop_one(_furniture(img, BOX), resolve_preset("field", 96))  # field: inscribed
    y0, x0, y1, x1 = c.box
    # (practically) every pixel the model sees is on the fan: the detected outline errs outwards by < 1%
    assert mask[y0:y1, x0:x1].mean() > 0.995 and c.field_mask.all()
    # and for a linear field the inscribed rectangle is the field's own box (within 2% of the side,
    # the detector's tolerance)
    lin, _ = _screen([BOX], "linear")
    assert all(abs(a - b) <= 0.02 * 800 for a, b in zip(crop_one(lin, resolve_preset("field", 96)).box, BOX))
