"""The crop cache: made once, read back exactly, ignored unless complete, and what a data set starts from."""

import os
import shutil

import numpy as np
import pytest
import torch

from thyro.data import crop_cache
from thyro.data.dataset import UltrasoundDataset
from thyro.image.preprocess import CROP_SETTINGS, read_crop
from thyro.image.preset import resolve_preset


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    """Scanner screens (text, calipers, black borders): crops with fields and inpainted marks."""
    from thyro.data import phantom
    from thyro.data.manifest import load_manifest

    return load_manifest(str(phantom.generate(tmp_path_factory.mktemp("screens"), n_benign=8, n_malignant=6,
                                              size=160, seed=1, layout="scanner")))


def _preset():
    return resolve_preset("field-marks", image_size=64)


def test_cache_reads_back_every_crop_exactly(screens, tmp_path):
    paths = screens["path"].tolist()
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not an image")
    d = crop_cache.cache_dir(str(tmp_path / "crops"), _preset())
    assert crop_cache.build(paths + [str(bad)], _preset(), d, part_size=4) == len(paths)  # the broken file: no row
    got = crop_cache.load(d)
    assert set(got) == set(paths)
    for p in paths:
        want, c = read_crop(p, _preset()), got[p]
        assert np.array_equal(c.image, want.image) and c.image.dtype == np.uint8
        assert np.array_equal(c.field_mask, want.field_mask) and c.field_mask.dtype == bool
        assert (c.box, c.shape, c.field_source, c.pane, c.marks_px) == \
            (tuple(want.box), tuple(want.shape), want.field_source, want.pane, want.marks_px)
    assert sum(c.marks_px > 0 for c in got.values()) >= 3  # the cache holds inpainted crops, not raw ones


def test_incomplete_cache_is_ignored(screens, tmp_path):
    paths = screens["path"].tolist()[:3]
    d = crop_cache.cache_dir(str(tmp_path), _preset())
    crop_cache.write_part(d, 0, paths, _preset())  # a build killed before its _COMPLETE marker
    assert crop_cache.load(d) == {} and not crop_cache.is_current(d, paths)
    crop_cache.mark_complete(d, 1, paths)
    assert set(crop_cache.load(d)) == set(paths) and crop_cache.is_current(d, paths)
    assert not crop_cache.is_current(d, paths[:2])  # another file list: built again
    os.remove(os.path.join(d, "part-00000.parquet"))  # complete, but a part this node cannot read
    assert crop_cache.load(d) == {} and crop_cache.hashes(d) == {}


def test_cache_made_by_other_versions_is_not_used(screens, tmp_path, monkeypatch):
    paths = screens["path"].tolist()[:2]
    d = crop_cache.cache_dir(str(tmp_path), _preset())
    crop_cache.build(paths, _preset(), d)
    now = crop_cache.made_with()
    monkeypatch.setattr(crop_cache, "made_with", lambda: {**now, "opencv": "0.0.0"})  # an upgraded OpenCV
    assert crop_cache.load(d) == {} and crop_cache.hashes(d) == {}
    assert crop_cache.build(paths, _preset(), d) == len(paths)  # rebuilt, not kept
    assert set(crop_cache.load(d)) == set(paths)


def test_cache_key_covers_every_setting_a_crop_reads(screens):
    """read_crop reads only CROP_SETTINGS of its preset, so a key of those alone is safe;
    presets that differ in them get separate caches, in anything else one."""
    seen = set()

    class Recording:
        def __init__(self, p):
            self._p = p

        def __getattr__(self, name):
            seen.add(name)
            return getattr(self._p, name)

    for name in ("field-marks", "study", "field", "robust"):
        for path in screens["path"][:2]:
            read_crop(path, Recording(resolve_preset(name, image_size=64)))
            read_crop(path, Recording(resolve_preset(name, image_size=64, field="auto", panes="all")))
    assert seen and seen <= set(CROP_SETTINGS), seen
    key = crop_cache.preset_key
    assert key(resolve_preset("field-marks", image_size=64)) == key(resolve_preset("field-marks", image_size=299,
                                                                                 rotation_degrees=5.0))
    assert key(resolve_preset("field-marks")) != key(resolve_preset("field"))
    assert key(resolve_preset("field")) != key(resolve_preset("field", panes="all"))


def test_dataset_starts_from_the_cache(screens, tmp_path):
    """Same tensors as cropping the files, and the files are not read again."""
    rows = screens.iloc[:6].copy()
    copies = []
    for p in rows["path"]:
        copies.append(str(tmp_path / os.path.basename(p)))
        shutil.copy(p, copies[-1])
    rows["path"] = copies
    want = [UltrasoundDataset(rows, _preset(), train=False)[i][0] for i in range(len(rows))]
    d = crop_cache.cache_dir(str(tmp_path / "crops"), _preset())
    crop_cache.build(copies, _preset(), d)
    crops = crop_cache.load(d, copies)
    for p in copies:
        os.remove(p)
    ds = UltrasoundDataset(rows, _preset(), train=False, crops=crops)
    for i in range(len(rows)):
        assert torch.equal(ds[i][0], want[i])


def test_cache_keeps_the_leakage_checks_hashes(screens, tmp_path):
    """The hashes a training's leakage check reads from the cache are the ones it would compute."""
    from thyro.data.decode import decode
    from thyro.data.splits import image_hashes

    from tests.dicom_builders import cine_dicom

    # a cine loop: the crop is of its middle frame, the leakage hash of its first
    rng = np.random.default_rng(0)
    cine = tmp_path / "cine.dcm"
    cine.write_bytes(cine_dicom(rng.integers(0, 255, (5, 64, 80), dtype=np.uint8)))
    paths = screens["path"].tolist()[:4] + [str(cine)]
    d = crop_cache.cache_dir(str(tmp_path / "crops"), _preset())
    crop_cache.build(paths, _preset(), d)
    got = crop_cache.hashes(d)
    assert set(got) == set(paths)
    for p in paths:
        data = open(p, "rb").read()
        sha, dh = image_hashes(data, decode(data, p))
        assert got[p][0] == sha and np.array_equal(got[p][1], dh) and got[p][1].shape == (256,)


def test_training_from_the_cache_equals_training_without(screens, tmp_path):
    """Same weights, predictions and leakage report: the cache changes where crops are made, not what."""
    from thyro.config import load_config
    from thyro.model import checkpoint
    from thyro.model.training import resolve_preset_for, train_run

    cfg = load_config(None, [{"preprocess": {"preset": "field-marks", "image_size": 32},
                              "train": {"epochs": 1, "batch_size": 4, "precision": "fp32", "threads": 1},
                              "eval": {"bootstrap": 10}, "split": {"n_repeats": 2}}])
    d = crop_cache.cache_dir(str(tmp_path / "crops"), resolve_preset_for(cfg))
    crop_cache.build(screens["path"].tolist(), resolve_preset_for(cfg), d)
    runs = {}
    for name, extra in {"plain": {}, "cached": {"crops": crop_cache.load(d), "hashes": crop_cache.hashes(d)}}.items():
        runs[name] = train_run(cfg, str(tmp_path / name), screens.copy(), "screens", log=lambda s: None,
                               model_id="m", **extra)
    assert runs["cached"].card["data"]["crops_from_cache"] == len(screens)
    assert runs["plain"].card["data"]["crops_from_cache"] == 0
    a, b = (checkpoint.load_predictions(str(tmp_path / n)) for n in ("plain", "cached"))
    assert a.equals(b)
    wa, wb = (torch.load(tmp_path / n / "model.pt", weights_only=True) for n in ("plain", "cached"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert runs["plain"].card["split"]["leakage"] == runs["cached"].card["split"]["leakage"]
