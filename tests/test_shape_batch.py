"""The batched shape features equal regionprops' per-map path (the oracle) on random and drawn maps."""

import math

import numpy as np
import pytest
from scipy import ndimage

from thyro.explain.shape import FEATURES, region_features, region_features_batch


def _assert_same(batch, maps):
    for got, m in zip(batch, maps):
        want = region_features(m)
        for k in FEATURES:
            if math.isnan(want[k]):
                assert math.isnan(got[k]), k
            else:
                assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k


def test_random_maps_of_many_shapes_match_regionprops():
    rng = np.random.default_rng(0)
    maps = []
    for _ in range(60):
        h, w = rng.integers(8, 57, 2)
        m = ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(0.5, 4)).astype(np.float32)
        maps.append((m - m.min()) / (m.max() - m.min() + 1e-9))
    _assert_same(region_features_batch(maps, 0.5), maps)


def test_drawn_maps_match_regionprops_and_known_answers():
    yy, xx = np.mgrid[:40, :56]
    square = np.zeros((40, 56), np.float32)
    square[10:20, 5:15] = 1                       # 10 x 10: area 100 px
    tall = ((yy - 20) ** 2 / 15 ** 2 + (xx - 28) ** 2 / 5 ** 2 <= 1).astype(np.float32)
    two = np.zeros((30, 30), np.float32)          # two equal blobs: the first in raster order wins
    two[2:6, 20:24] = 1
    two[20:24, 2:6] = 1
    edge = np.zeros((20, 20), np.float32)         # touching the map's border
    edge[0:20, 0:3] = 1
    ring = np.zeros((30, 30), np.float32)         # a hole: solidity < 1
    ring[5:25, 5:25] = 1
    ring[10:20, 10:20] = 0
    maps = [square, tall, two, edge, ring, np.zeros((16, 16), np.float32), np.ones((12, 9), np.float32)]
    got = region_features_batch(maps, 0.5)
    _assert_same(got, maps)
    assert got[0]["area"] == 100 / square.size and got[0]["solidity"] == 1.0
    assert got[1]["height_width"] > 2.5 and got[1]["orientation_axial"] == pytest.approx(1.0)
    assert got[4]["solidity"] == pytest.approx(300 / 400)
    assert all(math.isnan(v) for v in got[5].values())
