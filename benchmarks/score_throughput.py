"""Score job throughput and memory, all measured in one run.

    python benchmarks/score_throughput.py --model RUN_DIR [--n 2000] [--scale 10]

Prints images/s of
  (a) the bare predictor: forward + Grad-CAM on preloaded tensors (the limit);
  (b) the full pipeline end to end (Ray Data: discover, read, decode, predict,
      CAM, shape features, overlays as `--set score.overlays=...` says, Parquet);
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
    """Run the score job in a fresh process: Ray start-up, then the job on the
    running cluster (as `ray job submit` finds it); wall times and peak RSS."""
    code = ("import json,resource,sys,time\n"
            "from thyro.config import load_config, parse_override\n"
            "from thyro.ray_common import init_ray\n"
            "from thyro.ray_score import run_score\n"
            f"cfg = load_config(None, [parse_override(s) for s in {cfg_sets!r}])\n"
            "t = time.perf_counter()\n"
            "init_ray(cfg)\n"
            "up = time.perf_counter() - t\n"
            "t = time.perf_counter()\n"
            f"r = run_score(cfg, {model!r}, {archive!r}, {output!r}, log=lambda s: None)\n"
            "print(json.dumps({'startup': up, 'seconds': time.perf_counter() - t, 'counts': r.counts,"
            " 'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--set", action="append", default=[], help="config override for the pipeline, e.g. score.threads=2")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="for (a), (b), (c) alike")
    ap.add_argument("--skip-10x", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    from thyro.decode import read_image
    from thyro.predictor import Predictor
    from thyro.scoring import prepare
    from thyro.sources import Item

    tmp = tempfile.mkdtemp(prefix="thyro-bench-")
    try:
        archive = _archive(tmp, args.n, args.size)
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(archive) for f in fs)
        p = Predictor(args.model, cam_size=56, precision=args.precision)
        sets = [f"score.precision={args.precision}", *args.set]
        batches = [torch.from_numpy(np.stack([prepare(Item(f), p.preset)[0]["pixels"] for f in files[i:i + args.batch]]))
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

        # The pipeline's work besides the model (decode + preprocess, shape
        # features, overlay as configured), timed on one core. On a CPU-only
        # node it shares the cores with the model, which bounds b/a below 1.
        from thyro import storage
        from thyro.config import load_config, parse_override
        from thyro.geometry import Geometry, model_map_to_crop
        from thyro.scoring import cam_features, overlay_image
        sc = load_config(None, [parse_override(x) for x in sets]).score
        sample = files[:4 * args.batch]
        cams = p.predict_tensor(batches[0]).cam_model
        t = time.perf_counter()
        for i, f in enumerate(sample):
            row = prepare(Item(f), p.preset)[0]
            g = Geometry.from_dict(json.loads(row["geometry"]))
            cam = model_map_to_crop(cams[i % len(cams)], g, 56)
            cam_features(cam)
            if sc.overlays == "all":
                storage.write_many({os.path.join(tmp, "extra", f"{i}.img"): overlay_image(
                    row["pixels"], cam, p.preset, g, fmt=sc.overlay_format, quality=sc.overlay_quality,
                    max_side=sc.overlay_max_side)})
        extra_s = (time.perf_counter() - t) / len(sample)
        cores = os.cpu_count() or 1
        ceiling = 1 / (1 + a * extra_s / cores)

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

        one = _pipeline(args.model, archive, os.path.join(tmp, "out1"), sets)
        assert one["counts"]["ok"] == args.n, one["counts"]
        b = args.n / one["seconds"]
        b_cold = args.n / (one["seconds"] + one["startup"])
        big = one if args.skip_10x else _pipeline(args.model, _archive(tmp, args.n * args.scale, args.size),
                                                  os.path.join(tmp, "out10"), sets + ["score.overlays=none"])
        print(f"settings: {args.set or 'defaults'}")
        print(f"(a) bare predictor, forward + CAM : {a:7.1f} img/s")
        print(f"(b) full pipeline, end to end     : {b:7.1f} img/s  ({args.n} images, {one['seconds']:.1f}s on a "
              f"running cluster; {b_cold:.1f} img/s counting Ray start-up, {one['startup']:.1f}s)")
        print(f"(c) naive per-image loop          : {c:7.1f} img/s")
        print(f"(d) pytorch-grad-cam, same batches: {d:7.1f} img/s")
        if p.device.type == "cpu":
            print(f"work besides the model: {extra_s * 1000:.2f} core-ms/img; with the model on the same {cores} "
                  f"cores b/a cannot exceed {ceiling:.2f} here")
        print(f"b/a = {b / a:.2f} (>= 0.85)   b/c = {b / c:.2f} (>= 4)   a/d = {a / d:.2f} (>= 1.5)")
        print(f"driver peak RSS: {one['rss_mb']:.0f} MB at {args.n} images, {big['rss_mb']:.0f} MB at "
              f"{args.n * args.scale}: ratio {big['rss_mb'] / one['rss_mb']:.2f} (<= 1.2)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
