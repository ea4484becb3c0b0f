"""The embedded demo: the whole story on one machine, on CPU, in about 10 minutes.

1. the built-in phantom (415 benign / 93 malignant, one image per patient);
2. the study's protocol as a Ray Tune + Train experiment (ResNet18 and a
   baseline over several splits) with its statistics and HTML report;
3. a "hospital archive" of new phantom patients, a few deliberately broken
   files among them, on a local S3 endpoint (a moto server the demo starts and
   stops), scored by the Ray Data score job into Parquet + Grad-CAM overlays on
   that endpoint; the outputs are copied to a local folder before it stops;
4. a summary table, and where everything is.

Nothing here is specific to the demo's size: it calls the same library
functions as `thyro experiment` and `thyro score`.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from thyro.config import Config

# The study's published means (ResNet18, 10 splits of 508 real images).
STUDY = {"auc": 0.997, "accuracy": 0.984, "recall": 0.978, "precision": 0.939, "f1": 0.957}
BUCKET = "thyro-demo"


def broken_files(good_png: bytes) -> dict[str, bytes]:
    """Inputs an archive really contains now and then; each must become an error row."""
    from PIL import Image

    one = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(one, "PNG")
    return {"truncated.png": good_png[: len(good_png) // 3], "empty.png": b"",
            "report.png": b"%PDF-1.4 not an image\n" * 20, "one_pixel.png": one.getvalue()}


def build_archive(folder: Path, n_benign: int, n_malignant: int, seed: int) -> pd.DataFrame:
    """New phantom patients in a nested archive layout, plus broken files; returns the truth."""
    from thyro.data import phantom

    src = folder / "_phantom"
    manifest = pd.read_csv(phantom.generate(src, n_benign=n_benign, n_malignant=n_malignant, seed=seed))
    rows = []
    for i, r in manifest.iterrows():
        rel = f"archive/2026/study{i // 50:03d}/{Path(r['path']).name}"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes((src / r["path"]).read_bytes())
        rows.append({"rel": rel, "truth": r["label"]})
    good = (folder / rows[0]["rel"]).read_bytes()
    for name, data in broken_files(good).items():
        rel = f"archive/2026/unsorted/{name}"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
        rows.append({"rel": rel, "truth": None})
    return pd.DataFrame(rows)


class LocalS3:
    """A moto S3 server on 127.0.0.1 for the demo's lifetime (dummy credentials, in this process only)."""

    def __enter__(self) -> str:
        import logging
        import socket

        from moto.server import ThreadedMotoServer

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # Ray's local workers inherit this environment when Ray starts afterwards.
        for k, v in {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            os.environ[k] = v
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.stop()


@dataclass
class DemoResult:
    out: str
    report: str
    summary: pd.DataFrame
    cam_tests: pd.DataFrame
    score_counts: dict
    score_errors: pd.DataFrame
    archive_auc: float
    scores_local: str
    seconds: dict
    cam_in_field: pd.DataFrame
    faithfulness: pd.DataFrame
    zero_maps: pd.DataFrame
    archive_cam_in_field: float


def run_demo(cfg: Config, out: str, s3: bool = True, archive_size: tuple[int, int] = (160, 40),
             log: Callable[[str], None] = print) -> DemoResult:
    from contextlib import nullcontext

    import fsspec
    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    from thyro.data import storage
    from thyro.distributed.experiment import run_dir, run_experiment
    from thyro.distributed.score import run_score
    from thyro.model.score_output import PRED_DIR

    out = os.path.abspath(out)
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    step = lambda n, text: log(f"\n[demo {n}/4, {time.perf_counter() - t0:5.0f}s] {text}")  # noqa: E731
    with LocalS3() if s3 else nullcontext() as endpoint:
        if endpoint:
            cfg.storage.endpoint_url = endpoint
        step(1, "hospital archive: new phantom patients + broken files" + (f", on S3 at {endpoint}" if endpoint else ""))
        truth = build_archive(Path(out) / "archive-src", *archive_size, seed=2026)
        if endpoint:
            storage.configure(endpoint, "us-east-1")
            fs = fsspec.filesystem("s3", endpoint_url=endpoint)
            fs.mkdir(BUCKET)
            fs.put(str(Path(out) / "archive-src" / "archive") + "/", f"{BUCKET}/archive/", recursive=True)
            archive, scores = f"s3://{BUCKET}/archive", f"s3://{BUCKET}/scores"
        else:
            archive, scores = str(Path(out) / "archive-src" / "archive"), str(Path(out) / "scores")
        log(f"archive: {len(truth)} files at {archive}")
        times["setup"] = time.perf_counter() - t0

        step(2, f"phantom in {cfg.data.phantom_dir}, then the experiment: {' + '.join(cfg.experiment.models)} x "
                f"splits {cfg.experiment.splits} (Ray Tune grid, one Ray Train TorchTrainer per trial)")
        exp = run_experiment(cfg, os.path.join(out, "experiment"), log=log)
        times["experiment"] = exp.seconds

        model = run_dir(exp.out, cfg.experiment.reference_model, (cfg.experiment.splits or [0])[0])
        step(3, f"score: {archive} with {model} -> {scores} (Ray Data)")
        res = run_score(cfg, model, archive, scores, log=log)
        times["score"] = res.seconds
        pfs, path = storage.pyarrow_filesystem(storage.join(scores, PRED_DIR))
        rows = pq.read_table(path, filesystem=pfs).to_pandas()  # plain pyarrow: what any reader sees
        local = os.path.join(out, "scores")
        if endpoint:  # keep a copy: the endpoint's contents go when it stops
            fs.get(f"{BUCKET}/scores/", local + "/", recursive=True)
    step(4, "summary")
    rows["rel"] = rows["input_uri"].str.split(f"{archive}/", n=1).str[-1].radd("archive/")
    scored = rows[rows.status == "ok"].merge(truth.dropna(), on="rel")
    auc = float(roc_auc_score(scored["truth"] == "malignant", scored["prob_malignant"])) if len(scored) else float("nan")
    errors = rows.loc[rows.status == "error", ["rel", "error"]].sort_values("rel")
    def table(name: str) -> pd.DataFrame:
        path = os.path.join(exp.out, name)
        return pd.read_csv(path) if os.path.exists(path) else pd.DataFrame()

    cam = table("cam_shape_tests.csv")
    times["total"] = time.perf_counter() - t0
    return DemoResult(out=out, report=exp.report, summary=exp.summary, cam_tests=cam, score_counts=res.counts,
                      score_errors=errors, archive_auc=auc, scores_local=local, seconds=times,
                      cam_in_field=table("cam_in_field.csv"), faithfulness=table("cam_faithfulness.csv"),
                      zero_maps=table("cam_zero_maps.csv"),
                      archive_cam_in_field=float(rows.loc[rows.status == "ok", "cam_in_field"].median())
                      if "cam_in_field" in rows else float("nan"))


def format_summary(r: DemoResult, reference: str) -> str:
    """The table the demo ends with: our phantom figures beside the study's."""
    lines = ["", "Experiment on the phantom: mean over splits [95% interval: Nadeau-Bengio corrected t, since splits "
             "share patients]; the study's ResNet18 on 508 real images for scale, not a target:", ""]
    cols = list(STUDY)
    lines.append(f"  {'model':<10}" + "".join(f"{c:>22}" for c in cols))
    for _, s in r.summary.iterrows():
        lines.append(f"  {s['model']:<10}" + "".join(
            f"{s[c + '_mean']:>8.3f} [{s[c + '_ci_low']:.3f},{s[c + '_ci_high']:.3f}]" for c in cols))
    lines.append(f"  {'study':<10}" + "".join(f"{STUDY[c]:>22.3f}" for c in cols))
    lines += ["", "Operating point chosen on held-back training patients (never the test set), measured on the test "
              "sets; calibration error before -> after temperature scaling:"]
    for _, s in r.summary.iterrows():
        lines.append(f"  {s['model']:<10} sensitivity {s.get('sensitivity_at_target_sensitivity_mean', float('nan')):.3f}"
                     f"  specificity {s['specificity_at_target_sensitivity_mean']:.3f}"
                     f"  (chosen on: {s.get('threshold_chosen_on', 'test')})   ECE {s['ece_mean']:.3f} -> "
                     f"{s.get('ece_calibrated_mean', float('nan')):.3f}")
    if len(r.cam_in_field):
        lines += ["", "Grad-CAM (malignant log-odds) mass inside the scan field, median per model: " + ", ".join(
            f"{m} {v:.3f}" for m, v in zip(r.cam_in_field["model"], r.cam_in_field["median"]))]
    if len(r.faithfulness):
        lines += ["Faithfulness (RISE; vs a random pixel order): " + "; ".join(
            f"{f.model} deletion {f.deletion_ratio:.2f}x, insertion {f.insertion_ratio:.2f}x"
            for f in r.faithfulness.itertuples())]
    if len(r.cam_tests):
        sig = r.cam_tests[r.cam_tests["p_holm"] < 0.05]
        zero = ", ".join(f"{z['class']} {z['all_zero_maps_left_out']}/{z['maps']}" for _, z in r.zero_maps.iterrows())
        lines += [f"Grad-CAM region shape, benign vs malignant ({reference}, Mann-Whitney U, Holm): "
                  f"{len(sig)} of {len(r.cam_tests)} features differ at P < 0.05"
                  + (": " + ", ".join(f"{f} (p={p:.2g})" for f, p in zip(sig['feature'], sig['p_holm'])) if len(sig) else "")
                  + (f"; all-zero maps left out: {zero}" if zero else "")]
    c = r.score_counts
    lines += ["", f"Score job: {c['discovered']} archive files -> {c['ok']} scored, {c['error']} error rows, "
              f"{c.get('skipped', 0)} skipped; AUC on the archive's new patients {r.archive_auc:.3f}; "
              f"median cam_in_field {r.archive_cam_in_field:.3f}"]
    lines += [f"  error row: {e.rel}: {e.error}" for e in r.score_errors.itertuples()]
    s = r.seconds
    lines += ["", f"Wall time: {s['total']:.0f}s (experiment {s['experiment']:.0f}s, score {s['score']:.0f}s)",
              f"report:      {r.report}",
              f"experiment:  {r.out}/experiment/ (summary.csv, trials.parquet, runs/<model>/splitNN/ with model cards)",
              f"scores:      {r.scores_local}/ (predictions/*.parquet, files/*.parquet, overlays/, run_manifest.json)",
              "Research software: not for diagnosis."]
    return "\n".join(lines)
