"""The Grad-CAM analysis of a saved run (what the experiment runs on each trial's worker)."""

import io
import json

import numpy as np
import pandas as pd

from thyro.config import CamConfig
from thyro.data.manifest import load_manifest
from thyro.explain.cam_analysis import analyse_run, load_cams


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
