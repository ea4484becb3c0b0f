"""Score job throughput and memory, all measured in one run.

    python benchmarks/score_throughput.py --model RUN_DIR [--n 2000] [--scale 10]

Prints images/s of
  (a) the bare predictor: forward + Grad-CAM on preloaded tensors (the limit);
  (b) the full pipeline end to end (Ray Data: discover, read, decode, predict,
      CAM, shape features, overlays, Parquet);
  (c) a naive per-image loop (open, preprocess, model, CAM, write, one by one);
  (d) pytorch-grad-cam on the same batches as (a);
and the driver's peak RSS scoring an archive of n and of scale x n images.
Targets: b/a >= 0.85, b/c >= 4, a/d >= 1.5, RSS(10x)/RSS(1x) <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def _archive(folder: str, n: int, size: int) -> None:
    """n phantom images: generated once, then copied (content differs by name only)."""
    from thyro import phantom

    base = os.path.join(folder, "_base")
    if not os.path.exists(base):
        phantom.generate(base, n_benign=min(n, 200), n_malignant=max(1, min(n, 200) // 4), size=size, seed=7)
    imgs = sorted(os.listdir(os.path.join(base, "images")))
    out = os.path.join(folder, f"archive_{n}")
    os.makedirs(out, exist_ok=True)
    for i in range(n):
        dst = os.path.join(out, f"{i // 1000:03d}", f"{i:07d}.png")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.exists(dst):
            os.link(os.path.join(base, "images", imgs[i % len(imgs)]), dst)
    return out


def _pipeline(model: str, archive: str, output: str, cfg_sets: list[str]) -> dict:
    """Run the score job in a fresh process; return its wall time and peak RSS."""
    code = ("import json,resource,sys,time\n"
            "from thyro.config import load_config, parse_override\n"
            "from thyro.ray_score import run_score\n"
            f"cfg = load_config(None, [parse_override(s) for s in {cfg_sets!r}])\n"
            "t = time.perf_counter()\n"
            f"r = run_score(cfg, {model!r}, {archive!r}, {output!r}, log=lambda s: None)\n"
            "print(json.dumps({'seconds': time.perf_counter() - t, 'counts': r.counts,"
            " 'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()

    import numpy as np
    import torch

    from thyro.decode import read_image
    from thyro.predictor import Predictor

    tmp = tempfile.mkdtemp(prefix="thyro-bench-")
    try:
        archive = _archive(tmp, args.n, args.size)
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(archive) for f in fs)
        p = Predictor(args.model, cam_size=56)
        batches = [p.preprocess([read_image(f) for f in files[i:i + args.batch]])
                   for i in range(0, min(len(files), 8 * args.batch), args.batch)]
        p.predict_tensor(batches[0])  # warm-up
        t = time.perf_counter()
        for x in batches:
            p.predict_tensor(x)
        a = sum(len(x) for x in batches) / (time.perf_counter() - t)

        from pytorch_grad_cam import GradCAM as OracleCAM
        with OracleCAM(model=p.model, target_layers=[p.layer]) as oracle:
            oracle(input_tensor=batches[0], targets=None)
            t = time.perf_counter()
            for x in batches:
                with torch.no_grad():
                    torch.softmax(p.model(x), 1)  # the prediction, then the map
                oracle(input_tensor=x, targets=None)
            d = sum(len(x) for x in batches) / (time.perf_counter() - t)

        from PIL import Image
        naive_dir = os.path.join(tmp, "naive")
        os.makedirs(naive_dir)
        n_naive = min(len(files), 4 * args.batch)
        t = time.perf_counter()
        for i, f in enumerate(files[:n_naive]):
            out = p.predict([read_image(f)])
            Image.fromarray((out["cam"][0].astype(np.float32) * 255).astype(np.uint8)).save(
                os.path.join(naive_dir, f"{i}.png"))
            with open(os.path.join(naive_dir, f"{i}.json"), "w") as fh:
                json.dump({"p": float(out["prob_malignant"][0])}, fh)
        c = n_naive / (time.perf_counter() - t)

        one = _pipeline(args.model, archive, os.path.join(tmp, "out1"), args.set)
        b = args.n / one["seconds"]
        big = _pipeline(args.model, _archive(tmp, args.n * args.scale, args.size),
                        os.path.join(tmp, "out10"), args.set + ["score.overlays=false"])
        print(f"(a) bare predictor, forward + CAM : {a:7.1f} img/s")
        print(f"(b) full pipeline, end to end     : {b:7.1f} img/s  ({args.n} images, {one['seconds']:.0f}s)")
        print(f"(c) naive per-image loop          : {c:7.1f} img/s")
        print(f"(d) pytorch-grad-cam, same batches: {d:7.1f} img/s")
        print(f"b/a = {b / a:.2f} (>= 0.85)   b/c = {b / c:.2f} (>= 4)   a/d = {a / d:.2f} (>= 1.5)")
        print(f"driver peak RSS: {one['rss_mb']:.0f} MB at {args.n} images, {big['rss_mb']:.0f} MB at "
              f"{args.n * args.scale}: ratio {big['rss_mb'] / one['rss_mb']:.2f} (<= 1.2)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
