"""Grad-CAM analysis of a saved run's test images: maps, region shape, localisation.

Writes `cam_features.csv` (one row per test image) and `cams.npz` (the maps,
float16) into the run folder. Plain torch; the experiment calls it on the Ray
worker that trained the model.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from PIL import Image

from thyro import checkpoint, shape, storage
from thyro.decode import read_image
from thyro.predictor import Predictor


def _mask(path: str, size: int) -> np.ndarray:
    m = Image.open(io.BytesIO(storage.read_bytes(path))).convert("L").resize((size, size), Image.NEAREST)
    return np.asarray(m) > 127


def analyse_run(run: str, manifest: pd.DataFrame, size: int = 56, device: str = "auto",
                batch_size: int = 32, region_threshold: float = 0.5, frame: str = "middle") -> pd.DataFrame:
    preds = checkpoint.load_predictions(run)
    rows = manifest.set_index("image_id").loc[preds["image_id"]]
    predictor = Predictor(run, device=device, cam_size=size)
    cams, probs = [], []
    for i in range(0, len(rows), batch_size):
        images = [read_image(p, frame=frame) for p in rows["path"].iloc[i:i + batch_size]]
        out = predictor.predict(images)
        cams.append(out["cam"])
        probs.append(out["prob_malignant"])
    cams_arr, probs_arr = np.concatenate(cams), np.concatenate(probs)
    feats = []
    has_mask = "mask_path" in rows and rows["mask_path"].notna().all()
    for k, (image_id, r) in enumerate(rows.iterrows()):
        f = {"image_id": image_id, "label": int(r["label"]), "prob_malignant": float(probs_arr[k])}
        f.update(shape.region_features(cams_arr[k].astype(np.float32), region_threshold))
        if has_mask:
            mask = _mask(r["mask_path"], size)
            f["energy_inside"] = shape.energy_inside(cams_arr[k], mask)
            f["pointing_hit"] = shape.pointing_game(cams_arr[k], mask)
        feats.append(f)
    df = pd.DataFrame(feats)
    storage.write_bytes(storage.join(run, "cam_features.csv"), df.to_csv(index=False).encode())
    buf = io.BytesIO()
    np.savez_compressed(buf, image_id=np.asarray(rows.index, dtype=str), cam=cams_arr)
    storage.write_bytes(storage.join(run, "cams.npz"), buf.getvalue())
    return df


def load_cams(run: str) -> tuple[np.ndarray, np.ndarray]:
    z = np.load(io.BytesIO(storage.read_bytes(storage.join(run, "cams.npz"))))
    return z["image_id"], z["cam"]
