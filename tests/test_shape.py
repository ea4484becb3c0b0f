import numpy as np
import pandas as pd
import pytest

from thyro.explain import shape


def _ellipse(a, b, size=128, angle=0.0):
    yy, xx = np.mgrid[0:size, 0:size] - size / 2
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * xx - s * yy, s * xx + c * yy
    return ((u / a) ** 2 + (v / b) ** 2 <= 1).astype(np.float32)


def test_circle_and_ellipse_features():
    circle = shape.region_features(_ellipse(30, 30))
    assert circle["circularity"] > 0.85 and circle["eccentricity"] < 0.1
    assert circle["height_width"] == pytest.approx(1, abs=0.05)
    ell = shape.region_features(_ellipse(40, 20))  # 80 px wide, 40 px tall
    assert ell["height_width"] == pytest.approx(0.5, rel=0.05)
    assert ell["area"] == pytest.approx(np.pi * 40 * 20 / 128 ** 2, rel=0.05)
    # eccentricity of an ellipse with semi-axes a > b: sqrt(1 - b^2/a^2)
    assert ell["eccentricity"] == pytest.approx(np.sqrt(1 - 0.25), abs=0.02)


def test_taller_than_wide_is_seen():
    tall = shape.region_features(_ellipse(15, 35))  # 30 px wide, 70 px tall
    assert tall["height_width"] == pytest.approx(35 / 15, rel=0.06)
    assert tall["orientation_axial"] == pytest.approx(1, abs=0.01)  # major axis vertical


@pytest.mark.parametrize("deg,expected", [(3, -np.cos(np.radians(6))), (-3, -np.cos(np.radians(6))),
                                          (45, 0.0), (90, 1.0)])
def test_orientation_is_axial(deg, expected):
    # A wide ellipse tilted by `deg` from horizontal: cos(2 theta) with theta from the vertical
    # = -cos(2 deg). +-3 degrees agree (the raw angle read +86.8 and -86.8).
    f = shape.region_features(_ellipse(40, 16, angle=np.radians(deg)))
    assert f["orientation_axial"] == pytest.approx(expected, abs=0.03)


def test_all_zero_map_gives_nan():
    assert all(np.isnan(v) for v in shape.region_features(np.zeros((16, 16))).values())


def test_largest_component_only():
    m = _ellipse(20, 20)
    m[:5, :5] = 1  # a small second blob
    f = shape.region_features(m)
    assert f["area"] == pytest.approx(np.pi * 400 / 128 ** 2, rel=0.05)


def test_holm_matches_hand_computation():
    # p sorted: 0.01*3, 0.02*2, 0.04*1 -> 0.03, 0.04, 0.04 (monotone)
    assert np.allclose(shape.holm([0.04, 0.01, 0.02]), [0.04, 0.03, 0.04])


def test_compare_groups_finds_a_real_difference_only():
    rng = np.random.default_rng(0)
    n = 40
    df = pd.DataFrame({"label": [0] * n + [1] * n,
                       "circularity": np.r_[rng.normal(0.8, 0.05, n), rng.normal(0.6, 0.05, n)],
                       "area": rng.normal(0.2, 0.05, 2 * n)})
    out = shape.compare_groups(df).set_index("feature")
    assert out.loc["circularity", "significant"] and out.loc["circularity", "effect_size"] < -0.8
    assert not out.loc["area", "significant"]


def test_localisation_against_mask():
    mask = _ellipse(20, 20).astype(bool)
    cam = _ellipse(20, 20) * 0.9 + 0.001
    assert shape.energy_inside(cam, mask) > 0.9
    assert shape.pointing_game(cam, mask)
    off = np.roll(cam, 60, axis=1)
    assert not shape.pointing_game(off, mask)
