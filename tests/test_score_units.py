"""Score rows in physical units, and cine sampling, without Ray."""

import numpy as np
import pytest

from tests.dicom_builders import cine_dicom
from thyro.data.sources import Item
from thyro.explain.shape import physical_features
from thyro.image.geometry import Geometry, fit, model_map_to_crop, place
from thyro.image.transforms import resolve_preset
from thyro.model.scoring import cam_physical, prepare


def test_a_100px_square_at_0_1mm_is_100_square_mm():
    cam = np.zeros((200, 200), np.float32)
    cam[50:150, 50:150] = 1
    f = physical_features(cam, 0.5, 0.1, 0.1)
    assert f["area_mm2"] == pytest.approx(100.0)
    assert f["height_mm"] == pytest.approx(10.0) and f["width_mm"] == pytest.approx(10.0)
    # the outline through the edge pixels' centres: 4 x 99 px plus four cut corners of sqrt(0.5)
    assert f["perimeter_mm"] == pytest.approx(0.1 * (4 * 99 + 4 * np.sqrt(0.5)))


def test_anisotropic_pixels_scale_each_axis():
    cam = np.zeros((40, 40), np.float32)
    cam[10:30, 5:15] = 1  # 20 rows x 10 columns
    f = physical_features(cam, 0.5, 0.5, 2.0)  # 10 mm tall, 20 mm wide
    assert (f["height_mm"], f["width_mm"], f["area_mm2"]) == pytest.approx((10.0, 20.0, 200.0))
    # outline: 19 rows x 0.5 mm twice, 9 columns x 2 mm twice, four corners of hypot(0.25, 1)
    assert f["perimeter_mm"] == pytest.approx(2 * 19 * 0.5 + 2 * 9 * 2.0 + 4 * np.hypot(0.25, 1.0))


def test_unknown_scale_or_empty_map_is_nan():
    cam = np.ones((8, 8), np.float32)
    assert all(np.isnan(v) for v in physical_features(cam, 0.5, None, 0.1).values())
    assert all(np.isnan(v) for v in physical_features(np.zeros((8, 8)), 0.5, 0.1, 0.1).values())


def test_square_through_the_score_geometry_keeps_its_area():
    """A 100 x 100 px square on a 400 x 300 crop at 0.1 mm/px, carried onto a letterboxed 64 px
    model input and back to a 56-long-side map, as the score job does: ~100 mm^2."""
    crop = np.zeros((400, 300), np.uint8)
    crop[150:250, 100:200] = 255
    g = Geometry(shape=(400, 300), box=(0, 0, 400, 300), size=64, inner=fit(400, 300, 64, "letterbox"))
    cam = model_map_to_crop(place(crop, 64, g.inner).astype(np.float32) / 255, g, 56)
    assert cam.shape == (56, 42)
    f = cam_physical(cam, g, 0.1, 0.1)
    px_mm = 0.1 * 400 / 56  # one map pixel, in mm
    # resolution: the outline may move by up to about one map pixel
    assert abs(f["cam_area_mm2"] - 100) <= 40 * px_mm
    assert abs(f["cam_height_mm"] - 10) <= 2 * px_mm and abs(f["cam_width_mm"] - 10) <= 2 * px_mm


def test_dicom_scale_travels_on_the_rows_and_cine_is_sampled():
    frames = np.random.default_rng(0).integers(20, 200, (300, 48, 64), dtype=np.uint8)
    data = cine_dicom(frames, 0.01)
    rows = prepare(Item("cine.dcm", data=data), resolve_preset("study", 32), frames="all", max_frames=10)
    assert [r["frame"] for r in rows] == [round(j * 299 / 9) for j in range(10)]
    assert all((r["mm_per_pixel_y"], r["mm_per_pixel_x"]) == pytest.approx((0.1, 0.1)) for r in rows)  # 0.01 cm
    assert len({r["file_id"] for r in rows}) == 1 and len({r["row_id"] for r in rows}) == 10
    step = prepare(Item("cine.dcm", data=data), resolve_preset("study", 32), frames="all", frame_step=100)
    assert [r["frame"] for r in step] == [0, 100, 200]
    # the preset's own frame (study: the middle one) ignores the sampling
    assert resolve_preset("study", 32).frame == "middle"
    assert [r["frame"] for r in prepare(Item("c.dcm", data=data), resolve_preset("study", 32), max_frames=10)] == [150]


def test_cropped_to_the_dicom_region_says_so_and_keeps_its_scale():
    frames = np.zeros((1, 120, 160), np.uint8)
    frames[0, 20:100, 30:150] = np.random.default_rng(1).integers(40, 200, (80, 120), dtype=np.uint8)
    row = prepare(Item("r.dcm", data=cine_dicom(frames, 0.02, (20, 30, 100, 150))), resolve_preset("field", 32))[0]
    import json

    g = json.loads(row["geometry"])
    assert g["field_source"] == "dicom" and tuple(g["box"]) == (20, 30, 100, 150)
    assert (row["mm_per_pixel_y"], row["mm_per_pixel_x"]) == (pytest.approx(0.2), pytest.approx(0.2))
    plain = prepare(Item("p.dcm", data=cine_dicom(frames, None)), resolve_preset("field", 32))[0]
    assert plain["mm_per_pixel_y"] is None and plain["mm_per_pixel_x"] is None
