"""The GPU check: experiment smoke and score benchmark on one GPU, in under 5 minutes.

    python benchmarks/gpu_check.py [--out /tmp/thyro-gpu-check] [--device cuda] [--model RUN] [--n 4000]

For when a GPU machine is at hand (CI never needs one). It runs
1. the experiment job at the study's 224 px: ResNet18 from random init over
   four splits of the phantom, four trials sharing the GPU (0.25 GPU each),
   bf16, 3 epochs; prints training img/s per trial and per GPU;
2. the score benchmark (benchmarks/score_throughput.py) with the first run (or
   `--model`) on 640x480 JPEG screens: one predictor actor on the GPU, bf16,
   batches of 128, twice: JPEGs decoded in the CPU tasks (`score.decode_on=cpu`)
   and by the actor with nvjpeg (`score.decode_on=actor`); prints (a)-(d) for each
   and img/s per GPU of both paths.
`--device cpu` runs the same steps on CPU, shrunk, to check the script itself
(tests/test_gpu_check.py runs it so, with `--model` and a few images).

`--no-ray`, for a GPU machine without Ray (the lent one has no registry, and Ray's wheel is
larger than what may travel to it): the plain-PyTorch core on the device, the parts a GPU
changes, in three steps:
1. one split trained with `train_run` (no Tune, no Train), same settings as step 1 above;
2. the score benchmark's Ray-free part (`--stages-only`: the bare predictor (a),
   pytorch-grad-cam (d), the per-stage table whose "forward + CAM, actor" row is a GPU
   actor's cost) for both decode paths;
3. agreement: the same JPEG screens through the CPU predictor (fp32, PIL decode: the
   reference) and the device's, fp32 then bf16 with PIL decode, then bf16 with nvjpeg: max
   |delta p(malignant)|, labels that differ, the least Pearson r between CAMs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _smoke_config(args, gpu: bool, train: dict, extra: dict):
    """configs/smoke.yaml at the study's size on a GPU (508 phantom images, 224 px, 3 epochs), shrunk on CPU;
    `train` and `extra` add what the step needs."""
    from thyro.config import load_config

    return load_config("configs/smoke.yaml", [{
        "data": {"phantom_dir": os.path.join(args.out, "phantom"),
                 "phantom": {"n_benign": 415, "n_malignant": 93, "size": 256} if gpu else {}},
        "preprocess": {"image_size": 224 if gpu else 64},
        "train": {"epochs": 3 if gpu else 1, "batch_size": 32, "precision": "bf16", "channels_last": True, **train},
        **extra}])


def _training_rate(run: str) -> float:
    """A run's training img/s over its epochs after the first (which also decodes and caches the images)."""
    with open(os.path.join(run, "history.json")) as f:
        hist = json.load(f)
    warm = hist[1:] or hist
    return sum(h["train_images_per_s"] for h in warm) / len(warm)


def _experiment(args, gpu: bool) -> str:
    """1. The experiment smoke; -> the first split's run."""
    from thyro.distributed.experiment import run_dir, run_experiment

    splits = [0, 1, 2, 3] if gpu else [0, 1]
    cfg = _smoke_config(args, gpu, {"num_workers": 2 if gpu else 0}, {
        "experiment": {"models": ["resnet18"], "splits": splits, "cam_size": 56 if gpu else 16},
        "ray": {"use_gpu": gpu, "gpus_per_worker": 0.25, "cpus_per_worker": 3 if gpu else 0.49,
                "max_concurrent_trials": 4 if gpu else 2}})
    res = run_experiment(cfg, os.path.join(args.out, "experiment"), log=lambda s: None)
    per_trial = [_training_rate(run_dir(res.out, "resnet18", s)) for s in splits]
    print(f"1. experiment smoke: {len(splits)} ResNet18 trials at {cfg.preprocess.image_size} px, "
          f"{cfg.train.epochs} epochs, in {res.seconds:.0f}s; AUC {res.summary.auc_mean.iloc[0]:.3f}")
    print(f"   training img/s per trial (epochs after the first): {', '.join(f'{v:.0f}' for v in per_trial)}; "
          f"per GPU with {len(splits)} trials sharing it: {sum(per_trial):.0f}")
    return run_dir(res.out, "resnet18", splits[0])


def _train_plain(args, gpu: bool) -> str:
    """1 (`--no-ray`). One split trained in this process; -> its run."""
    from thyro.model.training import train_run

    cfg = _smoke_config(args, gpu, {"num_workers": 4 if gpu else 0, "device": "cuda" if gpu else "cpu"},
                        {"eval": {"bootstrap": 0}})
    run, t0 = os.path.join(args.out, "run"), time.perf_counter()
    res = train_run(cfg, run, log=lambda s: None)
    rate = _training_rate(run)
    print(f"1. plain training, one split: ResNet18 at {cfg.preprocess.image_size} px, {cfg.train.epochs} epochs, "
          f"bf16, channels_last, in {time.perf_counter() - t0:.0f}s; test AUC {res.metrics['auc']:.3f}; "
          f"{rate:.0f} training img/s (epochs after the first)", flush=True)
    return run


P_TOL, CAM_R_MIN = 0.05, 0.9  # what step 3 calls agreement: bf16 and another JPEG decoder may move this much
CIF_TOL = 0.05  # cam_in_field: the map moves a little, and the actor path finds the field on its own grey copy


def _screens(args, gpu: bool, n: int) -> list[str]:
    """n phantom scanner screens saved as JPEG (quality 90), as scanners export."""
    from PIL import Image

    from thyro.data import phantom

    folder = os.path.join(args.out, "screens")
    if not os.path.exists(os.path.join(folder, "jpeg")):
        phantom.generate(folder, n_benign=n - n // 4, n_malignant=n // 4, size=args.size or (480 if gpu else 96),
                         seed=11, layout="scanner")
        os.makedirs(os.path.join(folder, "jpeg"))
        for f in sorted(os.listdir(os.path.join(folder, "images"))):
            Image.open(os.path.join(folder, "images", f)).convert("RGB").save(
                os.path.join(folder, "jpeg", f.rsplit(".", 1)[0] + ".jpg"), "JPEG", quality=90)
    return sorted(os.path.join(folder, "jpeg", f) for f in os.listdir(os.path.join(folder, "jpeg")))


def _agreement(model: str, files: list[str], gpu: bool) -> dict:
    """3 (`--no-ray`). The score actor's outputs on `files` for each setting against the CPU
    reference; -> {setting: (max |dp|, labels differing, least CAM r, the differing labels' p and the
    threshold, max |d cam_in_field|)}."""
    import numpy as np
    import pyarrow as pa

    from thyro.config import config_to_dict, load_config
    from thyro.image.preset import Preset
    from thyro.model.batch_scorer import BatchScorer
    from thyro.model.checkpoint import load_card
    from thyro.model.score_plan import decode_on_actor
    from thyro.model.score_stages import finish_features, prepare_block

    card = load_card(model)
    preset = Preset.from_dict(card["inputs"]["preprocessing"])
    items = pa.Table.from_pylist([{"input_uri": f, "data": None, "error": None} for f in files])
    dev = "cuda" if gpu else "cpu"
    settings = {"cpu fp32, PIL decode (reference)": ("cpu", "fp32", "cpu"),
                f"{dev} fp32, PIL decode": (dev, "fp32", "cpu"),
                f"{dev} bf16, PIL decode": (dev, "bf16", "cpu"),
                f"{dev} bf16, JPEG decoded on the actor": (dev, "bf16", "actor")}
    outs, prepared = {}, {}
    for name, (device, precision, where) in settings.items():
        cfg = load_config(None, [{"score": {"device": device, "precision": precision, "decode_on": where,
                                            "batch_size": 32, "cam_size": 56}}])
        scorer = BatchScorer(model, config_to_dict(cfg))
        if where not in prepared:  # the CPU tasks' rows depend on where JPEGs decode, nothing else here
            prepared[where] = prepare_block(items, preset, cfg.score, set(), decode_on_actor(cfg.score))
        rows = prepared[where]
        t = pa.concat_tables([scorer(rows.slice(i, 32)) for i in range(0, rows.num_rows, 32)])
        assert t.column("status").to_pylist() == ["ok"] * len(files), t.column("error").to_pylist()
        cams = np.stack([np.frombuffer(b, np.float16).astype(np.float64) for b in t.column("cam").to_pylist()])
        cif = np.asarray([np.nan if v is None else v for v in finish_features(t, 0.5, 56)[0]["cam_in_field"]], float)
        outs[name] = (np.asarray(t.column("prob_malignant").to_pylist()), np.asarray(t.column("label").to_pylist()),
                      cams, cif)
    ref_p, ref_label, ref_cam, ref_cif = outs.pop("cpu fp32, PIL decode (reference)")
    threshold = card["outputs"]["threshold"]
    result = {}
    for name, (p, label, cam, cif) in outs.items():
        r = [np.corrcoef(a, b)[0, 1] for a, b in zip(ref_cam, cam) if a.std() > 0 and b.std() > 0]
        # a label can flip on a tiny |dp| only where p lies on the threshold: show where
        flips = [f"p {ref_p[i]:.9g} -> {p[i]:.9g}" for i in np.flatnonzero(label != ref_label)]
        both = ~(np.isnan(cif) | np.isnan(ref_cif))  # an all-zero map has no cam_in_field
        result[name] = (float(np.abs(p - ref_p).max()), len(flips), float(min(r)) if r else float("nan"),
                        f"threshold {threshold!r}: {'; '.join(flips[:3])}" if flips else "",
                        float(np.abs(cif - ref_cif)[both].max()) if both.any() else float("nan"))
    return result


def _no_ray(args, gpu: bool) -> None:
    model = args.model or _train_plain(args, gpu)
    n = args.n or (2000 if gpu else 48)
    for where in ("cpu", "actor"):
        sets = [f"score.decode_on={where}"] + (["score.device=cuda"] if gpu else [])
        cmd = [sys.executable, "benchmarks/score_throughput.py", "--model", model, "--n", str(n), "--precision",
               "bf16", "--batch", "128" if gpu else "16", "--stages-only", "--format", "jpeg", "--layout", "scanner",
               "--size", str(args.size or (480 if gpu else 96)), "--sample", str(min(n, 512)) if gpu else "16",
               *[a for x in sets for a in ("--set", x)]]
        print(f"2. score benchmark without Ray, JPEGs decoded on the {where}:", " ".join(cmd[1:]), flush=True)
        run = subprocess.run(cmd, capture_output=True, text=True)
        print(run.stdout, end="", flush=True)
        if run.returncode:
            sys.exit(f"gpu_check: the score benchmark failed:\n{run.stderr[-3000:]}")
    files = _screens(args, gpu, 96 if gpu else 16)
    print(f"3. agreement with the CPU reference on {len(files)} JPEG screens (tolerance: |dp| <= {P_TOL}, "
          f"CAM r >= {CAM_R_MIN}, |d cam_in_field| <= {CIF_TOL}):", flush=True)
    for name, (dp, flips, r, where, dcif) in _agreement(model, files, gpu).items():
        ok = dp <= P_TOL and not r < CAM_R_MIN and not dcif > CIF_TOL
        print(f"   {name:40s} max |dp| {dp:.2g}  labels differing {flips}  least CAM r {r:.4f}  "
              f"max |d cam_in_field| {dcif:.3f}  {'ok' if ok else 'OUTSIDE TOLERANCE'}  {where}")
        print("AGREEMENT " + json.dumps({"setting": name, "max_dp": dp, "label_flips": flips, "min_cam_r": r,
                                         "max_d_cam_in_field": dcif, "ok": ok}))



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/thyro-gpu-check")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--model", default=None, help="a saved run to score with: skips the experiment smoke")
    ap.add_argument("--n", type=int, default=None, help="images in the score benchmark [4000; cpu 200]")
    ap.add_argument("--size", type=int, default=None, help="screen height of its phantom [480; cpu 96]")
    ap.add_argument("--no-ray", action="store_true", help="the plain-PyTorch core only (see above)")
    args = ap.parse_args()
    gpu = args.device == "cuda"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import torch

    if gpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible to torch")
    name = torch.cuda.get_device_name(0) if gpu else "cpu"
    print(f"device: {name}; torch {torch.__version__}")
    t0 = time.perf_counter()
    if args.no_ray:
        _no_ray(args, gpu)
        print(f"gpu_check --no-ray done in {time.perf_counter() - t0:.0f}s")
        return
    model = args.model or _experiment(args, gpu)
    sets = ["score.batch_size=128", "score.cpus_per_task=1"] + (
        ["score.device=cuda", "score.gpus_per_actor=1", "score.cpus_per_actor=2", "score.threads=2"] if gpu else [])
    n = args.n or (4000 if gpu else 200)
    results = {}
    for where in ("cpu", "actor"):
        cmd = [sys.executable, "benchmarks/score_throughput.py", "--model", model, "--n", str(n), "--precision", "bf16",
               "--batch", "128" if gpu else "32", "--skip-10x", "--format", "jpeg", "--layout", "scanner",
               "--size", str(args.size or (480 if gpu else 96)), "--sample", "256" if gpu else "16",
               *[a for x in sets + [f"score.decode_on={where}"] for a in ("--set", x)]]
        print(f"2. score benchmark, JPEGs decoded on the {where}:", " ".join(cmd[1:]), flush=True)
        run = subprocess.run(cmd, capture_output=True, text=True)
        print(run.stdout, end="", flush=True)
        if run.returncode:
            sys.exit(f"gpu_check: the score benchmark failed:\n{run.stderr[-3000:]}")
        out = run.stdout
        results[where] = json.loads(out.strip().splitlines()[-1].split(" ", 1)[1])
    # one predictor actor on one GPU: the pipeline's img/s is the GPU's
    print(f"per {'GPU' if gpu else 'device (cpu dry run)'}: pipeline (b) "
          + "; ".join(f"decode on {w}: {r['b']:.0f} img/s" for w, r in results.items())
          + f"; bare predictor (a) {results['cpu']['a']:.0f} img/s")
    print(f"gpu_check done in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
