"""Grad-CAM analysis of a saved run's test images: maps, region shape, localisation, faithfulness.

Writes into the run folder:
- `cam_features.csv`: one row per test image: region shape measured on the map
  in the original image's geometry, `cam_zero` (the map is all zero: nothing in
  the image raises the target's log-odds; its shape features are NaN),
  `cam_in_field`, and, where the data set has true masks, localisation;
- `cams.npz`: the model-space maps (float16) and each image's geometry, so a
  report can put them back over the original image;
- `faithfulness.json`: deletion / insertion AUCs against a random order.
Plain torch; the experiment calls it on the Ray worker that trained the model.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import torch
from PIL import Image

from thyro.config import CamConfig
from thyro.data import storage
from thyro.explain import faithfulness, shape
from thyro.image.geometry import crop_map_to_original, original_mask_to_model
from thyro.image.transforms import preprocess_batch
from thyro.model.predictor import Predictor, cam_in_field, field_mask_on_input


def _mask(path: str, shape_hw: tuple[int, int]) -> np.ndarray:
    m = Image.open(io.BytesIO(storage.read_bytes(path))).convert("L")
    if m.size != shape_hw[::-1]:
        m = m.resize(shape_hw[::-1], Image.NEAREST)
    return np.asarray(m) > 127


def _decode(path: str, frame: str):
    from thyro.data.decode import decode_image, read_source

    d = decode_image(read_source(path), path, frame)
    return d.frames[0][1], d.regions


def analyse_run(run: str, manifest: pd.DataFrame, cam: CamConfig | None = None, size: int = 56,
                device: str = "auto", batch_size: int = 32, precision: str = "fp32",
                crops: dict | None = None) -> pd.DataFrame:
    from thyro.model import checkpoint

    cam = cam or CamConfig()
    preds = checkpoint.load_predictions(run)
    rows = manifest.set_index("image_id").loc[preds["image_id"]]
    predictor = Predictor(run, device=device, precision=precision, cam_size=size, cam_target=cam.target,
                          cam_layer_name=cam.layer)
    p = predictor.preset
    # Crops made for the same crop settings stand in for reading the files, except where the
    # preset does not crop: its field is then found on the original image.
    cached_only = bool(crops) and p.field != "none"
    feats, model_maps, geoms = [], [], []
    faith_x = []
    for i in range(0, len(rows), batch_size):
        chunk = rows.iloc[i:i + batch_size]
        paths = list(chunk["path"])
        if cached_only and all(q in crops for q in paths):
            # the job's crops of this preset (thyro.data.crop_cache): the files are not read again
            cropped, decoded = [crops[q] for q in paths], [(None, None)] * len(paths)
        else:
            decoded = [_decode(path, p.frame) for path in paths]
            cropped = [predictor.crop(img, reg) for img, reg in decoded]
        x = preprocess_batch([c.image for c in cropped], p)
        out = predictor.predict_tensor(x)
        if len(faith_x) * batch_size < cam.faithfulness_images:
            faith_x.append(x)
        for k, (image_id, r) in enumerate(chunk.iterrows()):
            c, (img, _) = cropped[k], decoded[k]
            g = c.geometry(p)
            m_model = out.cam_model[k]
            m_crop = predictor.crop_map(m_model, c)
            f = {"image_id": image_id, "label": int(r["label"]), "prob_malignant": float(out.prob_malignant[k]),
                 "cam_target": int(out.target[k]), "cam_zero": bool(m_model.max() <= 0)}
            f.update(shape.region_features(m_crop, cam.region_threshold))
            if isinstance(r.get("field_mask_path"), str):  # the phantom knows its true scan field
                field = original_mask_to_model(_mask(r["field_mask_path"], c.shape), g)
            else:
                field = field_mask_on_input(c, p, img)
            f["cam_in_field"] = cam_in_field(m_model, field)
            if isinstance(r.get("mask_path"), str):
                truth = _mask(r["mask_path"], c.shape)
                full = crop_map_to_original(m_crop, g)
                f["energy_inside"] = shape.energy_inside(full, truth)
                f["pointing_hit"] = float(shape.pointing_game(full, truth)) if full.max() > 0 else float("nan")
            feats.append(f)
            model_maps.append(m_model.astype(np.float16))
            geoms.append(g.to_dict())
    df = pd.DataFrame(feats)
    storage.write_bytes(storage.join(run, "cam_features.csv"), df.to_csv(index=False).encode())
    buf = io.BytesIO()
    np.savez_compressed(buf, image_id=np.asarray(rows.index, dtype=str), cam=np.stack(model_maps),
                        geometry=np.asarray([json.dumps(g) for g in geoms]))
    storage.write_bytes(storage.join(run, "cams.npz"), buf.getvalue())
    if faith_x:
        x = torch.cat(faith_x)[:cam.faithfulness_images]
        out = predictor.predict_tensor(x)
        c = predictor.faithfulness(x, out, cam.faithfulness_steps)
        keep = ~np.isnan(c["auc_deletion"])
        faith = {**(faithfulness.summarize(c, keep) if keep.any() else {"n_images": 0}),
                 "steps": cam.faithfulness_steps, "fill": "image mean", "n_zero_maps_skipped": int((~keep).sum())}
        storage.write_bytes(storage.join(run, "faithfulness.json"), json.dumps(faith, indent=2).encode())
    return df


def load_cams(run: str) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    z = np.load(io.BytesIO(storage.read_bytes(storage.join(run, "cams.npz"))))
    geoms = [json.loads(g) for g in z["geometry"]] if "geometry" in z else []
    return z["image_id"], z["cam"], geoms
