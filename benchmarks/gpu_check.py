"""The GPU check: experiment smoke and score benchmark on one GPU, in under 5 minutes.

    python benchmarks/gpu_check.py [--out /tmp/thyro-gpu-check] [--device cuda]

For when a GPU machine is at hand (CI never needs one). It runs
1. the experiment job at the study's 224 px: ResNet18 from random init over
   four splits of the phantom, four trials sharing the GPU (0.25 GPU each),
   bf16, 3 epochs; prints training img/s per trial and per GPU;
2. the score benchmark (benchmarks/score_throughput.py) with the first run:
   one predictor actor on the GPU, bf16, batches of 128; prints (a)-(d) and
   img/s per GPU.
`--device cpu` runs the same steps on CPU, shrunk, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/thyro-gpu-check")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = ap.parse_args()
    gpu = args.device == "cuda"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import torch

    from thyro.config import load_config
    from thyro.ray_experiment import run_dir, run_experiment

    if gpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible to torch")
    name = torch.cuda.get_device_name(0) if gpu else "cpu"
    print(f"device: {name}; torch {torch.__version__}")
    t0 = time.perf_counter()
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

    sets = ["score.batch_size=128", "score.cpus_per_task=1"] + (
        ["score.device=cuda", "score.gpus_per_actor=1", "score.cpus_per_actor=2", "score.threads=2"] if gpu else [])
    cmd = [sys.executable, "benchmarks/score_throughput.py", "--model", run_dir(res.out, "resnet18", splits[0]),
           "--n", "4000" if gpu else "200", "--precision", "bf16", "--batch", "128" if gpu else "32",
           "--skip-10x", *[a for s in sets for a in ("--set", s)]]
    print("2. score benchmark:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    print(f"gpu_check done in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
