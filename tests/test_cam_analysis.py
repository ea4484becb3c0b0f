"""The Grad-CAM analysis of a saved run (what the experiment runs on each trial's worker)."""

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from thyro.config import CamConfig
from thyro.data.manifest import load_manifest
from thyro.explain.cam_analysis import analyse_run, load_cams
from thyro.image.preprocess import Cropped


def test_analysis_uses_the_configured_target_and_writes_maps_shape_field_and_faithfulness(tiny_run, tiny_phantom):
    manifest = load_manifest(str(tiny_phantom))
    df = analyse_run(tiny_run, manifest, cam=CamConfig(target="benign", faithfulness_images=4, faithfulness_steps=4),
                     size=16)
    preds = pd.read_csv(f"{tiny_run}/predictions.csv")
    assert list(df.image_id) == list(preds.image_id)
    assert (df.cam_target == 0).all()  # the configured class, not the default
    assert df.cam_in_field.dropna().between(0, 1).all() and df.cam_in_field.notna().any()
    assert {"height_width", "orientation_axial", "energy_inside", "cam_zero"} <= set(df.columns)
    # an all-zero map has no region: NaN features, flagged, never silently dropped
    assert df.loc[df.cam_zero, "area"].isna().all() and df.loc[~df.cam_zero, "area"].notna().all()
    assert df.pointing_hit.dropna().isin([0.0, 1.0]).all() and df.pointing_hit.dtype == float  # averageable
    ids, cams, geoms = load_cams(tiny_run)
    assert cams.shape == (len(df), 16, 16) and len(geoms) == len(df)
    faith = json.loads(open(f"{tiny_run}/faithfulness.json").read())
    assert faith["n_images"] + faith["n_zero_maps_skipped"] == 4 and faith["steps"] == 4


def test_analysis_from_the_job_crops_equals_reading_the_files(tiny_phantom, tmp_path):
    """The crop cache stands in for decoding and cropping: the same features and maps, no file read."""
    from thyro.config import load_config
    from thyro.data import crop_cache
    from thyro.image.preset import Preset
    from thyro.model.checkpoint import load_card
    from thyro.model.training import train_run

    run = str(tmp_path / "run")
    cfg = load_config(None, [{"data": {"source": str(tiny_phantom)}, "train": {"epochs": 1, "batch_size": 8},
                              "preprocess": {"preset": "field-marks", "image_size": 32}, "eval": {"bootstrap": 0}}])
    train_run(cfg, run, log=lambda s: None)
    manifest = load_manifest(str(tiny_phantom))
    preset = Preset.from_dict(load_card(run)["inputs"]["preprocessing"])
    cam = CamConfig(faithfulness_images=4, faithfulness_steps=4)
    want = analyse_run(run, manifest, cam=cam, size=16)
    _, want_maps, _ = load_cams(run)
    d = crop_cache.cache_dir(str(tmp_path / "crops"), preset)
    crop_cache.build(manifest["path"].tolist(), preset, d)
    made = crop_cache.load(d)
    moved = manifest.assign(path=[f"{tmp_path}/gone/{i}.png" for i in range(len(manifest))])
    crops = {new: made[old] for new, old in zip(moved.path, manifest.path)}
    got = analyse_run(run, moved, cam=cam, size=16, crops=crops)  # the files' new paths do not exist
    pd.testing.assert_frame_equal(got, want)
    _, got_maps, _ = load_cams(run)
    assert np.array_equal(got_maps, want_maps)


def test_analysis_of_an_uncropped_preset_reads_the_files_whatever_crops_it_gets(tiny_run, tiny_phantom, tmp_path):
    """field: none finds the field on the original image, so crops cannot stand in for it."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    manifest = load_manifest(str(tiny_phantom))
    moved = manifest.assign(path=[f"{tmp_path}/gone/{i}.png" for i in range(len(manifest))])
    fake = {p: Cropped(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), bool), (0, 0, 8, 8), (8, 8), "none")
            for p in moved.path}
    with pytest.raises(Exception, match="gone"):
        analyse_run(str(run), moved, cam=CamConfig(faithfulness_images=0), size=16, crops=fake)
