"""The score job's stages called directly, without Ray: prepare -> the actor's model -> finish."""

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from thyro.config import config_to_dict, load_config
from thyro.model.batch_scorer import BatchScorer
from thyro.model.score_output import file_rows
from thyro.model.score_stages import finish_rows, prepare_block
from tests.dicom_builders import cine_dicom


@pytest.fixture(scope="module")
def scored(tiny_phantom, tiny_run, tmp_path_factory):
    """A 300-frame cine (0.01 cm pixels, 10 frames sampled), 8 phantom PNGs and a broken file,
    through the real stages up to the model (threads: 1 on the shared CPUs)."""
    folder = tmp_path_factory.mktemp("archive_with_a_name") / "DOE_JANE"
    folder.mkdir()
    df = pd.read_csv(tiny_phantom)
    imgs = [np.asarray(Image.open(tiny_phantom.parent / p).convert("L")) for p in df.path[:30]]
    cine = np.stack([imgs[k % len(imgs)] for k in range(300)])
    files = {"cine.dcm": cine_dicom(cine, 0.01), "broken.png": b"not a png"}
    files.update({f"{i}.png": (tiny_phantom.parent / p).read_bytes() for i, p in enumerate(df.path[:8])})
    for name, data in files.items():
        (folder / name).write_bytes(data)
    cfg = load_config(None, [{"score": {"frames": "all", "max_frames": 10, "cam_size": 16, "threads": 1}}])
    actor = BatchScorer(tiny_run, config_to_dict(cfg))
    items = pa.table({"input_uri": [str(folder / n) for n in sorted(files)], "data": [None] * len(files),
                      "error": [None] * len(files)})
    prepped = prepare_block(items, actor.p.preset, cfg.score)
    first = actor(prepped)
    # An operating point inside the scores, so that both labels occur (what a calibrated card may give).
    ok = [p for p in first.column("prob_malignant").to_pylist() if p is not None]
    actor.p.threshold = float(np.median(ok))
    return {"table": actor(prepped), "cfg": cfg, "preset": actor.p.preset.to_dict(), "folder": folder,
            "run": tiny_run}


def _finish_with(scored, out, **kw):
    args = {"output": str(out), "overlays": "all", "region": 0.5, "preset": scored["preset"], "cam_size": 16}
    return finish_rows(scored["table"], **{**args, **kw}).to_pandas()


def test_cine_gives_ten_frame_rows_and_one_file_row_with_their_max_and_mean(scored, tmp_path):
    rows = _finish_with(scored, tmp_path, overlays="none")
    cine = rows[rows.input_uri.str.endswith("cine.dcm")]
    assert len(cine) == 10 and (cine.status == "ok").all()
    files = file_rows(pa.Table.from_pandas(rows, preserve_index=False)).to_pandas().set_index("input_uri")
    assert len(files) == 10  # one per input: cine, broken, 8 PNGs
    f = files.loc[cine.input_uri.iloc[0]]
    assert f.n_frames == 10 and f.n_ok == 10 and f.n_error == 0
    assert f.prob_malignant_max == pytest.approx(cine.prob_malignant.max())
    assert f.prob_malignant_mean == pytest.approx(cine.prob_malignant.mean())
    assert f.label_any == ("malignant" if (cine.prob_malignant >= f.threshold).any() else "benign")
    broken = files.loc[[u for u in files.index if u.endswith("broken.png")][0]]
    assert (broken.n_error, broken.n_ok, broken.n_frames) == (1, 0, 0) and broken.label_any is None


def test_cine_rows_carry_its_mm_scale_and_cam_size_in_mm(scored, tmp_path):
    rows = _finish_with(scored, tmp_path, overlays="none")
    cine = rows[rows.input_uri.str.endswith("cine.dcm")]
    assert np.allclose(cine.mm_per_pixel_y, 0.1) and np.allclose(cine.mm_per_pixel_x, 0.1)
    # the map's region in mm = its relative area x the crop's area in mm^2 (96 x 96 px of 0.1 mm)
    # (an all-zero map has no region: NaN on both sides)
    assert np.allclose(cine.cam_area_mm2, cine.cam_area * (9.6 * 9.6), rtol=1e-6, equal_nan=True)
    assert cine.cam_area_mm2.isna().equals(cine.cam_area.isna())
    pngs = rows[rows.input_uri.str.endswith(".png") & (rows.status == "ok")]
    assert len(pngs) and pngs.cam_area_mm2.isna().all()  # no physical scale for a PNG


@pytest.mark.parametrize("mode", ["all", "errors_and_positives", "none"])
def test_overlay_modes_write_what_they_say(scored, tmp_path, mode):
    rows = _finish_with(scored, tmp_path, overlays=mode, overlay_format="jpeg", overlay_max_side=32)
    ok = rows[rows.status == "ok"]
    want = {"all": ok, "errors_and_positives": ok[ok.label == "malignant"], "none": ok.iloc[:0]}[mode]
    assert 0 < (ok.label == "malignant").sum() < len(ok)  # the modes differ on this table
    written = sorted(p.name for p in (tmp_path / "overlays").glob("*")) if (tmp_path / "overlays").exists() else []
    assert written == sorted(f"{r}.jpg" for r in want.row_id)
    assert set(rows.overlay_uri.dropna()) == {str(tmp_path / "overlays" / w) for w in written}
    for w in written[:3]:
        im = Image.open(tmp_path / "overlays" / w)
        assert im.format == "JPEG" and max(im.size) == 32  # bounded by overlay_max_side


@pytest.mark.parametrize("fmt,pil", [("png", "PNG"), ("webp", "WEBP")])
def test_overlay_formats(scored, tmp_path, fmt, pil):
    rows = _finish_with(scored, tmp_path, overlay_format=fmt, overlay_quality=50)
    uri = rows.overlay_uri.dropna().iloc[0]
    assert uri.endswith("." + fmt) and Image.open(uri).format == pil


def test_redacted_rows_hold_no_path_and_the_map_joins_back(scored, tmp_path):
    rows = _finish_with(scored, tmp_path / "out", path_map_uri=str(tmp_path / "vault"))
    assert rows.input_uri.isna().all()
    text = rows.drop(columns=["cam"]).astype(str)
    for piece in ("DOE_JANE", "archive_with_a_name", "cine.dcm", "broken.png"):
        assert not text.apply(lambda c: c.str.contains(piece, regex=False)).any().any(), piece
    pmap = pq.read_table(str(tmp_path / "vault")).to_pandas()
    joined = rows.merge(pmap, on="row_id", how="left")
    assert joined.input_uri_y.notna().all() and len(pmap) == len(rows)
    original = scored["table"].select(["row_id", "input_uri"]).to_pandas()
    assert (joined.set_index("row_id").input_uri_y.sort_index() == original.set_index("row_id").input_uri.sort_index()).all()


def test_optional_faithfulness_columns(scored, tiny_run):
    """score.faithfulness_steps > 0: per-row deletion / insertion areas of the map and of a random order."""
    cfg = load_config(None, [{"score": {"frames": "all", "max_frames": 2, "cam_size": 16, "threads": 1,
                                        "faithfulness_steps": 4}}])
    actor = BatchScorer(tiny_run, config_to_dict(cfg))
    items = pa.table({"input_uri": [str(scored["folder"] / "0.png"), str(scored["folder"] / "broken.png")],
                      "data": [None, None], "error": [None, None]})
    t = actor(prepare_block(items, actor.p.preset, cfg.score)).to_pandas()
    ok, bad = t[t.status == "ok"].iloc[0], t[t.status == "error"].iloc[0]
    zero = np.frombuffer(ok.cam, np.float16).max() == 0
    for k in ("auc_deletion", "auc_insertion", "auc_deletion_random", "auc_insertion_random"):
        assert np.isnan(ok[f"cam_{k}"]) if zero else 0 <= ok[f"cam_{k}"] <= 1
        assert bad[f"cam_{k}"] is None or np.isnan(bad[f"cam_{k}"])


def test_file_rows_by_hand_for_two_models_and_every_status():
    # a: frames 0, 1, 1 (two panes) ok + an error row; b: skipped only; c: an error only; model m2 on a.
    rows = pa.Table.from_pylist([
        {"file_id": "a", "input_uri": "u/a", "sha256": "sa", "frame": 0, "status": "ok", "prob_malignant": 0.2,
         "threshold": 0.5, "model_id": "m1"},
        {"file_id": "a", "input_uri": "u/a", "sha256": "sa", "frame": 1, "status": "ok", "prob_malignant": 0.7,
         "threshold": 0.5, "model_id": "m1"},
        {"file_id": "a", "input_uri": "u/a", "sha256": "sa", "frame": 1, "status": "ok", "prob_malignant": 0.3,
         "threshold": 0.5, "model_id": "m1"},
        {"file_id": "a", "input_uri": "u/a", "sha256": "sa", "frame": 2, "status": "error", "prob_malignant": None,
         "threshold": 0.5, "model_id": "m1"},
        {"file_id": "a", "input_uri": "u/a", "sha256": "sa", "frame": 0, "status": "ok", "prob_malignant": 0.4,
         "threshold": 0.45, "model_id": "m2"},
        {"file_id": "b", "input_uri": "u/b", "sha256": None, "frame": 0, "status": "skipped",
         "prob_malignant": None, "threshold": 0.5, "model_id": "m1"},
        {"file_id": "c", "input_uri": "u/c", "sha256": None, "frame": 0, "status": "error", "prob_malignant": None,
         "threshold": None, "model_id": "m1"},
    ])
    got = {(r["file_id"], r["model_id"]): r for r in file_rows(rows).to_pylist()}
    assert list(got) == [("a", "m1"), ("a", "m2"), ("b", "m1"), ("c", "m1")]
    a = got["a", "m1"]
    assert (a["n_frames"], a["n_rows"], a["n_ok"], a["n_error"], a["n_skipped"]) == (2, 4, 3, 1, 0)
    assert a["prob_malignant_max"] == 0.7 and a["prob_malignant_mean"] == pytest.approx(0.4)
    assert a["label_any"] == "malignant" and a["sha256"] == "sa" and a["threshold"] == 0.5
    assert got["a", "m2"]["label_any"] == "benign"  # 0.4 < its own threshold 0.45
    b, c = got["b", "m1"], got["c", "m1"]
    assert (b["n_skipped"], b["n_ok"], b["n_frames"], b["label_any"], b["prob_malignant_max"]) == (1, 0, 0, None, None)
    assert (c["n_error"], c["threshold"], c["label_any"], c["sha256"]) == (1, None, None, None)


def test_fused_stages_give_the_split_stages_rows(scored, tmp_path):
    # The two layouts of score.stages run the same functions: the rows must agree (timings aside).
    from thyro.model.batch_scorer import FusedScorer

    cfg, folder = scored["cfg"], scored["folder"]
    names = sorted(p.name for p in folder.iterdir())
    items = pa.table({"input_uri": [str(folder / n) for n in names], "data": [None] * len(names),
                      "error": [None] * len(names)})
    args = {"overlays": "all", "region": 0.5, "preset": scored["preset"], "cam_size": 16}
    scorer = BatchScorer(scored["run"], config_to_dict(cfg))
    split = finish_rows(scorer(prepare_block(items, scorer.p.preset, cfg.score)), output=str(tmp_path / "s"), **args)
    fused = FusedScorer(scored["run"], config_to_dict(cfg), scored["preset"], set(),
                        {"output": str(tmp_path / "f"), **args})(items)
    timing = ["decode_ms", "infer_ms", "overlay_uri"]
    a, b = split.drop_columns(timing).to_pandas(), fused.drop_columns(timing).to_pandas()
    assert len(a) == len(b) == 10 + 1 + 8
    pd.testing.assert_frame_equal(a, b)
    assert fused.column("overlay_uri").null_count == split.column("overlay_uri").null_count == 1
