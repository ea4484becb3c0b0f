"""score.decode_on: actor: JPEGs travel as bytes and the predictor decodes them itself
(torchvision.io.decode_jpeg: nvjpeg on a GPU, libjpeg-turbo here), with the CPU path as the oracle."""

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from thyro.config import config_to_dict, load_config
from thyro.model.batch_scorer import BatchScorer
from thyro.model.score_plan import decode_on_actor
from thyro.model.score_stages import finish_rows, prepare_block

PROB_ABS = 0.02
INPUT_MEAN_ABS = 3.0  # grey levels, of 255


def _jpeg(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=90)
    return b.getvalue()


@pytest.fixture(scope="module")
def blocks(tiny_phantom, tiny_run, tmp_path_factory):
    import pandas as pd

    man = pd.read_csv(tiny_phantom)
    root = tiny_phantom.parent
    items = []
    for k, path in enumerate(man.path[:6]):
        img = np.asarray(Image.open(root / path).convert("RGB"))
        img = np.asarray(Image.fromarray(img).resize((160 + 16 * k, 120 + 8 * k)))  # screens of other shapes
        items.append({"input_uri": f"mem://{k}.jpg", "data": _jpeg(img), "error": None})
    good = items[0]["data"]
    items.append({"input_uri": "mem://broken.jpg", "data": good[:400], "error": None})  # header, then cut off
    items.append({"input_uri": "mem://grey.png", "data": _png(), "error": None})       # not a JPEG: the CPU path
    cfg = load_config(None, [{"score": {"device": "cpu", "overlays": "none"}}])
    actor = BatchScorer(tiny_run, config_to_dict(cfg))
    out = {}
    for mode in (False, True):
        prepped = prepare_block(pa.Table.from_pylist(items), actor.p.preset, cfg.score, on_actor=mode)
        scored = actor(prepped)
        out[mode] = (prepped, finish_rows(scored, str(tmp_path_factory.mktemp("o")), "none", 0.5,
                                          actor.p.preset.to_dict(), 56).to_pylist())
    return out


def _png() -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.full((64, 80), 90, np.uint8)).save(b, "PNG")
    return b.getvalue()


def test_auto_is_the_actor_only_with_a_gpu():
    s = load_config(None).score
    assert s.decode_on == "auto" and not decode_on_actor(s)
    assert decode_on_actor(s.model_copy(update={"gpus_per_actor": 1}))
    assert decode_on_actor(s.model_copy(update={"decode_on": "actor"}))
    assert not decode_on_actor(s.model_copy(update={"decode_on": "cpu", "gpus_per_actor": 1}))


def test_cpu_tasks_ship_only_the_jpeg_bytes(blocks):
    prepped, _ = blocks[True]
    rows = prepped.to_pylist()
    jpegs = [r for r in rows if r["input_uri"].endswith(".jpg") and "broken" not in r["input_uri"]]
    assert len(jpegs) == 6
    assert all(r["jpeg"] is not None and r["pixels"] is None and r["geometry"] is None for r in jpegs)
    png = next(r for r in rows if r["input_uri"].endswith(".png"))
    assert png["jpeg"] is None and png["pixels"] is not None


def test_actor_decoding_matches_the_cpu_path(blocks):
    cpu = {r["input_uri"]: r for r in blocks[False][1]}
    act = {r["input_uri"]: r for r in blocks[True][1]}
    assert cpu.keys() == act.keys()
    for u, c in cpu.items():
        a = act[u]
        if u.endswith("broken.jpg"):
            continue
        assert a["status"] == c["status"] == "ok", (u, a["error"])
        assert (a["height"], a["width"]) == (c["height"], c["width"])
        assert [a[k] for k in ("field_y0", "field_x0", "field_y1", "field_x1")] == \
            [c[k] for k in ("field_y0", "field_x0", "field_y1", "field_x1")]
        assert abs(a["prob_malignant"] - c["prob_malignant"]) < PROB_ABS
        assert a["sha256"] == c["sha256"] and a["row_id"] == c["row_id"]


def test_actor_model_input_is_the_cpu_square(blocks):
    cpu = {r["input_uri"]: r for r in blocks[False][0].to_pylist()}
    act = blocks[True][0].to_pylist()
    from thyro.data import jpeg_batch

    for r in act:
        if r["jpeg"] is None or r["input_uri"].endswith("broken.jpg"):
            continue
        img = jpeg_batch.decode_batch([r["jpeg"]], "cpu")[0]
        size = int(np.sqrt(len(cpu[r["input_uri"]]["pixels"]) // 3))
        from thyro.image.transforms import Preset

        sq, inner = jpeg_batch.to_square(img, Preset("study", image_size=size))
        want = np.frombuffer(cpu[r["input_uri"]]["pixels"], np.uint8).reshape(size, size, 3)
        got = sq.permute(1, 2, 0).numpy()
        assert np.abs(got.astype(float) - want).mean() < INPUT_MEAN_ABS
        assert json.loads(cpu[r["input_uri"]]["geometry"])["inner"] == list(inner)


def test_a_broken_jpeg_is_an_error_row_not_a_failed_batch(blocks):
    act = {r["input_uri"]: r for r in blocks[True][1]}
    cpu = {r["input_uri"]: r for r in blocks[False][1]}
    assert cpu["mem://broken.jpg"]["status"] == "error"
    assert act["mem://broken.jpg"]["status"] == "error" and act["mem://broken.jpg"]["error"]
    assert sum(r["status"] == "ok" for r in act.values()) == len(act) - 1


def _dual_screen() -> np.ndarray:
    """A dual-pane screen (853 x 480): two fans side by side whose bottom corners come within
    24 px of each other, speckle inside, a line of text above and a caliper label across the gap.
    Squashed onto a 128 px square the label bridges the ~3 px gap and detection there merges the
    fans into one hull (IoU 0.74 with the CPU path's field); the working copy keeps them apart."""
    import cv2

    rng = np.random.default_rng(0)
    h, w = 480, 853
    mask = np.zeros((h, w), np.uint8)
    for cx in (233, 619):
        cv2.fillPoly(mask, [np.array([[cx - 40, 60], [cx + 40, 60], [cx + 181, 440], [cx - 181, 440]], np.int32)], 1)
    img = np.where(mask > 0, rng.integers(40, 200, (h, w)), 0).astype(np.uint8)
    cv2.putText(img, "THYROID L 12MHz", (20, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 255, 2)
    cv2.putText(img, "D1 2.65 cm", (370, 425), cv2.FONT_HERSHEY_SIMPLEX, 0.7, 255, 2)
    return np.repeat(img[..., None], 3, axis=2)


def test_actor_field_keeps_the_panes_of_a_dual_screen_apart():
    """cam_in_field's field on the actor path (found by the CPU tasks on the grey copy the actor
    ships) is the CPU path's field, and the space between the two fans is not part of it."""
    from thyro.data import jpeg_batch
    from thyro.image.field import working_shape
    from thyro.image.preprocess import crop_field
    from thyro.image.transforms import Preset
    from thyro.model.predictor import field_mask_from_view, field_mask_on_input

    data = _jpeg(_dual_screen())
    p = Preset("study", image_size=128)
    cpu_img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    crop = crop_field(cpu_img, p)[0]
    cpu = field_mask_on_input(crop, p, cpu_img)
    img = jpeg_batch.decode_batch([data], "cpu")[0]
    view = jpeg_batch.field_view(img).numpy()
    assert view.shape == working_shape(480, 853)
    actor = field_mask_from_view(view, crop.geometry(p))
    assert (actor & cpu).sum() / (actor | cpu).sum() > 0.97
    # between the fans, halfway down the field (x 426 of 853, y 250 of 480) on the model's square
    assert not cpu[66, 64] and not actor[66, 64]
