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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _experiment(args, gpu: bool) -> str:
    """1. The experiment smoke; -> the first split's run."""
    from thyro.config import load_config
    from thyro.distributed.experiment import run_dir, run_experiment

    splits = [0, 1, 2, 3] if gpu else [0, 1]
    cfg = load_config("configs/smoke.yaml", [{
        "data": {"phantom_dir": os.path.join(args.out, "phantom"),
                 "phantom": {"n_benign": 415, "n_malignant": 93, "size": 256} if gpu else {}},
        "preprocess": {"image_size": 224 if gpu else 64},
        "train": {"epochs": 3 if gpu else 1, "batch_size": 32, "precision": "bf16", "channels_last": True,
                  "num_workers": 2 if gpu else 0},
        "experiment": {"models": ["resnet18"], "splits": splits, "cam_size": 56 if gpu else 16},
        "ray": {"use_gpu": gpu, "gpus_per_worker": 0.25, "cpus_per_worker": 3 if gpu else 0.49,
                "max_concurrent_trials": 4 if gpu else 2}}])
    res = run_experiment(cfg, os.path.join(args.out, "experiment"), log=lambda s: None)
    per_trial = []
    for s in splits:
        with open(os.path.join(run_dir(res.out, "resnet18", s), "history.json")) as f:
            hist = json.load(f)
        warm = hist[1:] or hist  # the first epoch also decodes and caches the images
        per_trial.append(sum(h["train_images_per_s"] for h in warm) / len(warm))
    print(f"1. experiment smoke: {len(splits)} ResNet18 trials at {cfg.preprocess.image_size} px, "
          f"{cfg.train.epochs} epochs, in {res.seconds:.0f}s; AUC {res.summary.auc_mean.iloc[0]:.3f}")
    print(f"   training img/s per trial (epochs after the first): {', '.join(f'{v:.0f}' for v in per_trial)}; "
          f"per GPU with {len(splits)} trials sharing it: {sum(per_trial):.0f}")
    return run_dir(res.out, "resnet18", splits[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/thyro-gpu-check")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--model", default=None, help="a saved run to score with: skips the experiment smoke")
    ap.add_argument("--n", type=int, default=None, help="images in the score benchmark [4000; cpu 200]")
    ap.add_argument("--size", type=int, default=None, help="screen height of its phantom [480; cpu 96]")
    args = ap.parse_args()
    gpu = args.device == "cuda"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import torch

    if gpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible to torch")
    name = torch.cuda.get_device_name(0) if gpu else "cpu"
    print(f"device: {name}; torch {torch.__version__}")
    t0 = time.perf_counter()
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
