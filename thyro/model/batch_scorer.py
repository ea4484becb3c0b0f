"""The predictor's stage of the score job: `BatchScorer` loads a saved run once and scores a
block of prepared rows (forward + Grad-CAM, nothing else); `FusedScorer` runs every stage of a
block (prepare, score, finish) in one place.

Plain PyTorch; `thyro.distributed.score` runs them as Ray Data actors (the skip set of a
resumed run reaches a fused actor through Ray's object store, resolved there), and tests and
benchmarks call them directly. torch is imported when a scorer is built, not with the module.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from thyro.config import Config
from thyro.data import storage
from thyro.model.score_output import output_schema
from thyro.model.score_plan import decode_on_actor, pool_plan
from thyro.model.score_stages import finish_rows, prepare_block

# score.faithfulness_steps > 0: per-row RISE areas, the map's order and a random one
FAITHFULNESS_COLUMNS = ("auc_deletion", "auc_insertion", "auc_deletion_random", "auc_insertion_random")


class BatchScorer:
    """Loaded once per actor: the saved run, its preset and threshold. Does the
    model's work only (forward + Grad-CAM); everything else runs in CPU tasks
    on either side, so a GPU actor never waits on PNG encoding or decoding."""

    def __init__(self, run: str, cfg_dict: dict):
        from thyro.model.predictor import Predictor

        cfg = Config.model_validate(cfg_dict)
        s = self.s = cfg.score
        storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
        import torch

        # Ray gives a fractional-CPU actor one OpenMP thread; `pool_plan` says how many it takes.
        torch.set_num_threads(s.threads or pool_plan(s, os.cpu_count() or 1, 0).threads)
        self.p = Predictor(run, device=s.device, precision=s.precision, cam_size=s.cam_size,
                           cam_target=cfg.cam.target, cam_layer_name=cfg.cam.layer)
        self.faithfulness_steps = s.faithfulness_steps

    def batch_tensor(self, pixels: list[bytes], size: int):
        """(S, S, 3) uint8 squares -> the normalised (N, 3, S, S) batch on the model's device:
        `transforms.normalize`'s arithmetic, once per batch, done there. The CPU tasks ship a
        quarter of the bytes of float32, and so does the copy to a GPU (whose actor then spends
        no CPU time on the float conversion)."""
        import torch

        from thyro.data.jpeg_batch import normalise

        u8 = np.stack([np.frombuffer(b, np.uint8).reshape(size, size, 3) for b in pixels])
        return normalise(torch.from_numpy(u8).to(self.p.device).permute(0, 3, 1, 2), self.p.preset)

    def _decode_here(self, table, ok: list[int]):
        """Rows that carry their JPEG (score.decode_on: actor) decoded on this actor's device in one
        batch (`thyro.data.jpeg_batch`), fitted and normalised there; the others as shipped. -> the table
        with those rows' pixels, size, geometry and status filled in (and no `jpeg` column), the
        rows still ok, and their batch."""
        import pyarrow as pa
        import torch

        from thyro.data import jpeg_batch
        from thyro.image.geometry import Geometry

        p, dev = self.p.preset, self.p.device
        cols = {k: table.column(k).to_pylist()
                for k in ("status", "error", "pixels", "geometry", "height", "width", "field_view")}
        jpeg = table.column("jpeg").to_pylist()
        here = [i for i in ok if jpeg[i] is not None]
        squares, views = {}, {}
        for i, img in zip(here, jpeg_batch.decode_batch([jpeg[i] for i in here], dev) if here else []):
            if isinstance(img, Exception):
                cols["status"][i], cols["error"][i] = "error", f"cannot decode image: {img}"
                continue
            sq, inner = jpeg_batch.to_square(img, p)
            squares[i] = sq
            views[i] = jpeg_batch.field_view(img)
            h, w = int(img.shape[1]), int(img.shape[2])
            cols["geometry"][i] = json.dumps(Geometry(shape=(h, w), box=(0, 0, h, w), size=p.image_size,
                                                      inner=inner).to_dict())
            cols["height"][i], cols["width"][i] = h, w
        # every decoded row stays ok, in `ok`'s order: one stack serves the overlays and the batch
        stacked = torch.stack(list(squares.values())) if squares else None
        if squares:  # to the host in one copy each per batch, not one per image: the squares, the field views
            for i, sq in zip(squares, stacked.permute(0, 2, 3, 1).contiguous().cpu().numpy()):
                cols["pixels"][i] = sq.tobytes()
            flat = torch.cat([v.reshape(-1) for v in views.values()]).cpu()
            for i, v in zip(views, flat.split([v.numel() for v in views.values()])):
                cols["field_view"][i] = v.numpy().tobytes()
        ok = [i for i in ok if cols["status"][i] == "ok"]
        shipped = [i for i in ok if i not in squares]
        parts = {}
        if squares:
            parts.update(zip(squares, jpeg_batch.normalise(stacked, p)))
        if shipped:
            parts.update(zip(shipped, self.batch_tensor([cols["pixels"][i] for i in shipped], p.image_size)))
        x = torch.stack([parts[i] for i in ok]) if ok else None
        schema = table.schema
        for k, v in cols.items():
            table = table.set_column(schema.get_field_index(k), k, pa.array(v, type=schema.field(k).type))
        return table.drop_columns(["jpeg"]), ok, x

    def __call__(self, table):
        import pyarrow as pa
        import torch

        n = table.num_rows
        ok = [i for i, v in enumerate(table.column("status").to_pylist()) if v == "ok"]
        size = self.p.preset.image_size
        prob, margin, label, cam, target, ms = ([None] * n for _ in range(6))
        faith = {k: [None] * n for k in FAITHFULNESS_COLUMNS}
        if "jpeg" in table.column_names:
            table, ok, x = self._decode_here(table, ok)
        elif ok:
            px = table.column("pixels").to_pylist()
            x = self.batch_tensor([px[i] for i in ok], size)
        if ok:
            t0 = time.perf_counter()
            out = self.p.predict_tensor(x)
            per_image = (time.perf_counter() - t0) * 1000 / len(ok)
            for j, i in enumerate(ok):
                prob[i] = float(out.prob_malignant[j])
                margin[i] = float(out.margin[j])
                label[i] = "malignant" if out.label[j] else "benign"
                cam[i] = out.cam_model[j].astype(np.float16).tobytes()  # model space; finish_rows maps it back
                target[i] = "malignant" if out.target[j] == 1 else "benign"
                ms[i] = per_image
            if self.faithfulness_steps:
                c = self.p.faithfulness(x, out, self.faithfulness_steps)
                for k in FAITHFULNESS_COLUMNS:
                    for j, i in enumerate(ok):
                        faith[k][i] = None if np.isnan(c[k][j]) else float(c[k][j])
        for name, values, typ in (("prob_malignant", prob, pa.float64()), ("margin", margin, pa.float64()),
                                  ("label", label, pa.string()), ("cam", cam, pa.binary()),
                                  ("cam_target", target, pa.string()), ("infer_ms", ms, pa.float64()),
                                  ("threshold", [self.p.threshold] * n, pa.float64()),
                                  ("model_id", [self.p.model_id] * n, pa.string()),
                                  ("cam_size", [self.p.cam_size] * n, pa.int64()),
                                  *((f"cam_{k}", v, pa.float64()) for k, v in faith.items())):
            table = table.append_column(name, pa.array(values, type=typ))
        return table


class FusedScorer:
    """score.stages fused: one actor reads, decodes and preprocesses a block, scores it batch by
    batch and finishes the rows (shape features, overlays) itself. On a CPU node the split stages
    cost more than they save: every CPU task process pays thyro's imports (~5 core-s), blocks
    cross the object store twice, and the predictor's threads contend with the tasks for the same
    cores. One single-threaded actor per core keeps every core busy with no contention.
    `skip`: the keys of rows already scored (`score_output.score_key`), left out."""

    def __init__(self, run: str, cfg_dict: dict, preset: dict, skip: set[str], finish_args: dict):
        from thyro.image.preset import Preset

        self.scorer = BatchScorer(run, cfg_dict)
        self.s = self.scorer.s
        self.preset = Preset.from_dict(preset)
        self.skip = skip
        self.finish_args = finish_args

    def __call__(self, items):
        import pyarrow as pa

        rows = prepare_block(items, self.preset, self.s, self.skip, decode_on_actor(self.s))
        bs = self.s.batch_size
        parts = [finish_rows(self.scorer(rows.slice(i, bs)), **self.finish_args) for i in range(0, rows.num_rows, bs)]
        return pa.concat_tables(parts) if parts else output_schema().empty_table()
