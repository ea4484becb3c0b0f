"""The score job end to end on the shared local Ray cluster."""

import io
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.dicom_builders import PHI_FRAGMENTS, cine_dicom, header, to_bytes, ultrasound
from thyro.config import load_config
from thyro.data import storage
from thyro.distributed.score import run_score

pytestmark = pytest.mark.ray

SCORE = {"score": {"batch_size": 8, "cam_size": 16, "actors": 1, "cpus_per_actor": 0.5,
                   "cpus_per_task": 0.5, "frames": "all", "chunk_size": 50}}


def _png(arr, mode=None):
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


def _corpus(tiny_phantom) -> dict[str, bytes]:
    """Good phantom images, DICOM, and every kind of bad input the issue lists."""
    df = pd.read_csv(tiny_phantom)
    files = {f"good/{i}.png": (tiny_phantom.parent / p).read_bytes() for i, p in enumerate(df.path[:6])}
    grey = np.asarray(Image.open(tiny_phantom.parent / df.path[0]))
    files["dicom/mono1_3frames.dcm"] = to_bytes(ultrasound(np.stack([grey] * 3), "MONOCHROME1"))
    files["dicom/rgb_2frames.dcm"] = to_bytes(ultrasound(np.stack([np.stack([grey] * 3, -1)] * 2), "RGB"))
    h, w = grey.shape  # YBR_FULL_422: Y0 Y1 Cb Cr per pixel pair, as ultrasound scanners store it
    pairs = np.stack([grey[:, 0::2], grey[:, 1::2], np.full((h, w // 2), 128, np.uint8),
                      np.full((h, w // 2), 128, np.uint8)], -1).reshape(h, w * 2)
    files["dicom/ybr422_2frames.dcm"] = to_bytes(ultrasound(np.stack([pairs] * 2), "YBR_FULL_422"))
    png = files["good/0.png"]
    files["bad/truncated.png"] = png[: len(png) // 3]
    files["bad/zero.png"] = b""
    files["bad/text_named.jpg"] = b"this is not an image\n" * 10
    files["bad/one_pixel.png"] = _png(np.zeros((1, 1), np.uint8))
    files["bad/huge.png"] = _png(np.zeros((12000, 12000), np.uint8))
    files["bad/sixteen_bit.png"] = _png((grey.astype(np.uint16) * 200))  # decodes (16 bit is supported)
    cmyk = io.BytesIO()
    Image.fromarray(np.stack([grey] * 3, -1)).convert("CMYK").save(cmyk, "JPEG")
    files["bad/cmyk.jpg"] = cmyk.getvalue()  # decodes (CMYK is supported)
    files["bad/no_pixels.dcm"] = to_bytes(header())
    return files


EXPECTED_ROWS = 6 + 3 + 2 + 2 + 7 + 1  # good, 3+2+2 DICOM frames, 7 bad-or-odd files, no-pixel DICOM
EXPECTED_ERRORS = {"truncated.png", "zero.png", "text_named.jpg", "one_pixel.png", "huge.png", "no_pixels.dcm"}


def _read_back(output: str) -> pd.DataFrame:
    fs, path = storage.pyarrow_filesystem(storage.join(output, "predictions"))
    return pq.read_table(path, filesystem=fs).to_pandas()  # plain pyarrow, no Ray


def _check(df: pd.DataFrame) -> None:
    assert len(df) == EXPECTED_ROWS and not df.duplicated(["input_uri", "frame"]).any()
    errors = {u.rsplit("/", 1)[-1] for u in df.loc[df.status == "error", "input_uri"]}
    assert errors == EXPECTED_ERRORS
    ok = df[df.status == "ok"]
    assert ok.prob_malignant.between(0, 1).all() and ok.label.isin(["benign", "malignant"]).all()
    assert all(len(b) == 16 * 16 * 2 for b in ok.cam)  # float16 16x16
    assert sorted(ok[ok.input_uri.str.endswith("mono1_3frames.dcm")].frame) == [0, 1, 2]
    assert sorted(ok[ok.input_uri.str.endswith("ybr422_2frames.dcm")].frame) == [0, 1]
    assert df.loc[df.status == "error", "error"].str.len().gt(0).all()


def test_s3_folder_to_s3_parquet_with_every_bad_input(ray_cluster, s3_endpoint, tiny_phantom, tiny_run):
    import fsspec

    fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint)
    for name, data in _corpus(tiny_phantom).items():
        fs.pipe(f"thyro-test/archive/{name}", data)
    cfg = load_config(None, [SCORE, {"storage": {"endpoint_url": s3_endpoint}}])
    res = run_score(cfg, tiny_run, "s3://thyro-test/archive", "s3://thyro-test/scored", log=lambda s: None)
    df = _read_back("s3://thyro-test/scored")
    _check(df)
    assert res.counts["ok"] + res.counts["error"] == EXPECTED_ROWS
    assert fs.exists(df.loc[df.status == "ok", "overlay_uri"].iloc[0].replace("s3://", ""))
    blob = fs.cat("thyro-test/scored/run_manifest.json").decode()
    for phi in PHI_FRAGMENTS:  # DICOM header data never reaches outputs
        text = df.drop(columns=["cam"]).astype(str)
        assert phi not in blob and not text.apply(lambda c: c.str.contains(phi)).any().any()


def test_zip_and_tar_archives(ray_cluster, tiny_phantom, tiny_run, tmp_path):
    import tarfile

    from thyro.data.sources import zip_bytes

    corpus = _corpus(tiny_phantom)
    (tmp_path / "a.zip").write_bytes(zip_bytes(corpus))
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as t:
        for name, data in corpus.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    cfg = load_config(None, [SCORE])
    for archive in ("a.zip", "a.tar.gz"):
        run_score(cfg, tiny_run, str(tmp_path / archive), str(tmp_path / f"out_{archive}"), log=lambda s: None)
        _check(_read_back(str(tmp_path / f"out_{archive}")))
    import duckdb  # readable without Ray or pandas
    n = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/out_a.zip/predictions/*.parquet')").fetchall()[0][0]
    assert n == EXPECTED_ROWS


def test_rerun_after_a_real_kill_scores_everything_exactly_once(ray_cluster, tiny_phantom, tiny_run, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    df = pd.read_csv(tiny_phantom)
    for i in range(60):
        (src / f"{i:03d}.png").write_bytes((tiny_phantom.parent / df.path[i % len(df)]).read_bytes())
    (src / "broken.png").write_bytes(b"nope")
    cfg_file = tmp_path / "cfg.yaml"
    import yaml
    cfg_file.write_text(yaml.safe_dump({**SCORE, "score": {**SCORE["score"], "chunk_size": 10, "overlays": "none"},
                                        "ray": {"address": ray_cluster}}))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.score", "--model", tiny_run, "--input", str(src), "--output", str(out),
           "--config", str(cfg_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "predictions").glob("*.parquet")) if (out / "predictions").exists() else []) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait(60)
    from thyro.model.score_output import scored_keys
    from thyro.model.checkpoint import load_card

    partial = len(scored_keys(str(out), load_card(tiny_run)["model_id"]))  # readable rows only
    assert 0 < partial < 61
    res = run_score(load_config(cfg_file), tiny_run, str(src), str(out), log=lambda s: None)
    final = _read_back(str(out))
    assert len(final) == 61 and not final.duplicated(["input_uri", "frame"]).any()
    assert res.counts["previously_scored"] == partial


def test_cine_per_file_rows_redacted_paths_and_resume(ray_cluster, tiny_phantom, tiny_run, tmp_path):
    src = tmp_path / "DOE_JANE_1970"
    src.mkdir()
    df = pd.read_csv(tiny_phantom)
    imgs = [np.asarray(Image.open(tiny_phantom.parent / p).convert("L")) for p in df.path[:30]]
    (src / "cine.dcm").write_bytes(cine_dicom(np.stack([imgs[k % 30] for k in range(300)]), 0.01))
    for i in range(3):
        (src / f"{i}.png").write_bytes((tiny_phantom.parent / df.path[i]).read_bytes())
    vault, out = tmp_path / "vault", tmp_path / "out"
    cfg = load_config(None, [SCORE, {"score": {"max_frames": 10, "redact_paths": True, "path_map_uri": str(vault)}}])
    res = run_score(cfg, tiny_run, str(src), str(out), log=lambda s: None)
    rows = _read_back(str(out))
    assert len(rows) == 13 and rows.input_uri.isna().all()
    text = rows.drop(columns=["cam"]).astype(str)
    assert not text.apply(lambda c: c.str.contains("DOE_JANE", regex=False)).any().any()
    pmap = pd.read_parquet(vault)
    rows = rows.drop(columns=["input_uri"]).merge(pmap[["row_id", "input_uri"]], on="row_id", how="left")
    assert rows.input_uri.notna().all()
    cine = rows[rows.input_uri.str.endswith("cine.dcm")]
    assert len(cine) == 10 and np.allclose(cine.mm_per_pixel_x, 0.1)
    assert cine.cam_area_mm2.isna().equals(cine.cam_area.isna())  # mm wherever the map has a region

    def per_file():
        f = pd.read_parquet(out / "files")
        assert f.input_uri.isna().all() and len(f) == 4 and f.file_id.is_unique
        c = f.set_index("file_id").loc[cine.file_id.iloc[0]]
        assert c.n_frames == 10 and c.prob_malignant_max == pytest.approx(cine.prob_malignant.max())
        assert c.prob_malignant_mean == pytest.approx(cine.prob_malignant.mean())

    per_file()
    assert res.counts["files"] == 4 and res.counts["ok"] == 13
    # A kill after the rows but before their per-file rows: the rerun scores nothing again and
    # writes the per-file rows from what is on storage, keyed without any path.
    import shutil

    shutil.rmtree(out / "files")
    again = run_score(cfg, tiny_run, str(src), str(out), log=lambda s: None)
    assert again.counts["previously_scored"] == 13 and again.counts["ok"] == 0 and again.counts["files"] == 4
    assert len(_read_back(str(out))) == 13
    per_file()
