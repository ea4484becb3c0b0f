"""Score job throughput and memory, all measured in one run.

    python benchmarks/score_throughput.py --model RUN_DIR [--n 2000] [--scale 10]

    python benchmarks/score_throughput.py --model RUN_DIR --n 1000 --scale 3 --layout scanner --size 480 \
        --format jpeg --preset study        # the issue-11 figures: 640x480 JPEG screens

Prints a per-stage table (core-ms per image of each stage, on the pipeline's own
functions, one thread) and the ceiling it sets on this machine's cores (and, where the
pool fuses the stages, the ceiling of the fused actor's whole call, measured: the stages
plus what lies between them), and images/s of
  (a) the bare predictor: forward + Grad-CAM on preloaded tensors (the limit);
  (b) the full pipeline end to end (Ray Data: discover, read, decode, predict,
      CAM, shape features, overlays as `--set score.overlays=...` says, Parquet);
  (b') its marginal rate between n and scale x n images (same settings): fixed costs left out;
  (c) a naive per-image loop (open, preprocess, model, CAM, write, one by one);
  (d) pytorch-grad-cam on the same batches as (a);
and the driver's peak RSS scoring an archive of n and of scale x n images.
Targets: non-model cost <= 1.5 core-ms/image at 128 px, b >= 0.9 x the ceiling, b/a >= 0.6 on
2 CPU cores (0.85 where the model has its own device), a/d >= 1.5, RSS(10x)/RSS(1x) <= 1.2.
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


def _archive(folder: str, n: int, size: int, layout: str = "simple", fmt: str = "png") -> str:
    """n phantom images: generated once (PNG; re-encoded as JPEG quality 90 with `fmt` jpeg, as
    scanners export), then hard-linked (content differs by name only)."""
    from PIL import Image

    from thyro.data import phantom

    base = os.path.join(folder, "_base")
    if not os.path.exists(base):
        phantom.generate(base, n_benign=min(n, 200), n_malignant=max(1, min(n, 200) // 4), size=size, seed=7,
                         layout=layout)
    src = os.path.join(base, "images")
    if fmt == "jpeg":
        src = os.path.join(base, "jpeg")
        if not os.path.exists(src):
            os.makedirs(src)
            for f in sorted(os.listdir(os.path.join(base, "images"))):
                Image.open(os.path.join(base, "images", f)).convert("RGB").save(
                    os.path.join(src, f.rsplit(".", 1)[0] + ".jpg"), "JPEG", quality=90)
    imgs = sorted(os.listdir(src))
    ext = imgs[0].rsplit(".", 1)[1]
    out = os.path.join(folder, f"archive_{n}")
    os.makedirs(out, exist_ok=True)
    for i in range(n):
        dst = os.path.join(out, f"{i // 1000:03d}", f"{i:07d}.{ext}")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.exists(dst):
            os.link(os.path.join(src, imgs[i % len(imgs)]), dst)
    return out


def _with_preset(run: str, name: str, folder: str) -> str:
    """A copy of a saved run whose card names another preset (same image size): the cost of a
    preset, measured with the run's weights. Its predictions mean nothing; its timings do."""
    from thyro.image.transforms import resolve_preset

    out = os.path.join(folder, f"run-{name}")
    shutil.copytree(run, out)
    with open(os.path.join(out, "metadata.json")) as f:
        card = json.load(f)
    size = card["inputs"]["preprocessing"]["image_size"]
    card["inputs"]["preprocessing"] = resolve_preset(name, size).to_dict()
    with open(os.path.join(out, "metadata.json"), "w") as f:
        json.dump(card, f)
    return out


# A cluster `ray job submit` finds has finished booting: its dashboard, agents and prestarted
# workers are up and idle. Started in the job's own process, they go on loading for seconds after
# `init_ray` returns and take CPU from the job; the timed run starts once they have settled.
SETTLE_S = 5.0


def _pipeline(model: str, archive: str, output: str, cfg_sets: list[str], settle: float = SETTLE_S) -> dict:
    """Run the score job in a fresh process: Ray start-up, `settle` seconds for the new cluster
    to finish booting, then the job on the running cluster (as `ray job submit` finds it); wall
    times (start-up without the settling) and peak RSS."""
    code = ("import json,resource,sys,time\n"
            "from thyro.config import load_config, parse_override\n"
            "from thyro.distributed.common import init_ray\n"
            "from thyro.distributed.score import run_score\n"
            f"cfg = load_config(None, [parse_override(s) for s in {cfg_sets!r}])\n"
            "t = time.perf_counter()\n"
            "init_ray(cfg)\n"
            "up = time.perf_counter() - t\n"
            f"time.sleep({settle})\n"
            "t = time.perf_counter()\n"
            f"r = run_score(cfg, {model!r}, {archive!r}, {output!r}, log=lambda s: None)\n"
            "print(json.dumps({'startup': up, 'seconds': time.perf_counter() - t, 'counts': r.counts,"
            " 'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    with open(os.path.join(output, "run_manifest.json")) as f:
        sc = json.load(f)["config"]["score"]  # the pool as resolved (score.stages / actors / threads auto)
    r["plan"] = f"{sc['stages']}, {sc['actors']} actor(s) x {sc['threads']} thread(s)"
    return r


def _stages(p, model: str, files: list[str], sets: list[str], tmp: str, model_core_ms: float) -> dict:
    """Core-ms per image of each pipeline stage, in this process on one thread, on the
    pipeline's own functions (what its CPU tasks and actor run), over `files`."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from thyro.config import config_to_dict, load_config, parse_override
    from thyro.data.sources import Item
    from thyro.model import score_stages, scoring
    from thyro.model.batch_scorer import BatchScorer
    from thyro.model.score_plan import decode_on_actor

    cfg = load_config(None, [parse_override(x) for x in sets])
    s, n = cfg.score, len(files)
    items = pa.Table.from_pylist([{"input_uri": f, "data": None, "error": None} for f in files])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a CPU task's share: Ray gives a task one OpenMP thread
    out = {}

    def best(fn, repeats=3):  # the least of a few passes: the cost, not the neighbours' load
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            r = fn()
            times.append(time.perf_counter() - t)
        return min(times), r

    try:
        if decode_on_actor(s):
            # The CPU tasks read, hash and parse the JPEG header; the actor (below) decodes, fits
            # and normalises on its device. Inputs it cannot take are decoded here, inside this row.
            out["read + hash + header (to actor)"], prepped = best(
                lambda: score_stages.prepare_block(items, p.preset, s, on_actor=True))
        else:
            datas = [open(f, "rb").read() for f in files]
            out["decode"], decoded = best(lambda: [scoring.decode_for(x, f, p.preset) for f, x in zip(files, datas)])
            out["preprocess + field"], rows = best(lambda: [r for f, x, d in zip(files, datas, decoded)
                                                            for r in scoring.frame_rows(d, f, "", p.preset)])
            out["read + hash + rows -> Arrow"] = best(lambda: score_stages.prepare_block(items, p.preset, s))[0] - \
                out["decode"] - out["preprocess + field"]
            prepped = score_stages.prepare_block(items, p.preset, s)
    finally:
        torch.set_num_threads(threads)
    actor = BatchScorer(model, config_to_dict(cfg))
    actor_threads = torch.get_num_threads()  # what the pipeline's actor takes (score.threads, pool_plan)
    actor(prepped.slice(0, s.batch_size))  # warm-up
    actor_wall, scored = best(lambda: [actor(prepped.slice(i, s.batch_size)) for i in range(0, n, s.batch_size)], 2)
    torch.set_num_threads(1)
    try:
        scored = pa.concat_tables(scored)
        args = {"output": os.path.join(tmp, "stages"), "region": cfg.cam.region_threshold,
                "preset": p.preset.to_dict(), "cam_size": s.cam_size, "overlay_format": s.overlay_format,
                "overlay_quality": s.overlay_quality, "overlay_max_side": s.overlay_max_side}
        out["shape features + cam_in_field"] = best(lambda: score_stages.finish_features(
            scored, args["region"], args["cam_size"]))[0]
        fin = best(lambda: score_stages.finish_rows(scored, overlays="none", **args))[0]
        out["finish: rows -> Arrow"] = fin - out["shape features + cam_in_field"]
        full, done = best(lambda: score_stages.finish_rows(scored, overlays=s.overlays, **args))
        out[f"overlay encode + write ({s.overlays})"] = full - fin
        out["Parquet write"] = best(lambda: pq.write_table(done, os.path.join(tmp, "stages.parquet")))[0]
    finally:
        torch.set_num_threads(threads)
    ms = {k: v * 1000 / n for k, v in out.items()}
    ms_model = actor_wall * 1000 / n * actor_threads
    return {"non_model": ms, "actor": ms_model, "actor_threads": actor_threads, "bare": model_core_ms,
            "block": _fused_block_ms(model, files, cfg, p.preset, {**args, "overlays": s.overlays,
                                                                   "path_map_uri": None})}


def _fused_block_ms(model: str, files: list[str], cfg, preset, finish_args: dict) -> float | None:
    """Core-ms per image of the fused actor's own call (`FusedScorer`: prepare, score and finish a
    block of `block_batches` x `batch_size` items, one thread): the stages above plus what lies
    between them (Arrow slicing and concatenation, per-block set-up), which their sum leaves out.
    None where this machine's pool would not fuse the stages."""
    import pyarrow as pa
    import torch

    from thyro.config import config_to_dict
    from thyro.model.batch_scorer import FusedScorer
    from thyro.model.score_plan import pool_plan

    s = cfg.score
    cores = os.cpu_count() or 1
    if not pool_plan(s, cores, 0, cores).fused:
        return None
    threads = torch.get_num_threads()
    try:
        actor = FusedScorer(model, config_to_dict(cfg.model_copy(update={"score": s.model_copy(update={"threads": 1})})),
                            preset.to_dict(), set(), finish_args)
        items = pa.Table.from_pylist([{"input_uri": f, "data": None, "error": None} for f in files])
        block = s.block_batches * s.batch_size
        actor(items.slice(0, block))  # warm-up
        best = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            for i in range(0, len(files), block):
                actor(items.slice(i, block))
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return best * 1000 / len(files)


def _ends(args, p, model, files, archive, sets, tmp):
    """(c) the naive loop, and the pipeline at n (and scale x n) images."""
    import numpy as np
    from PIL import Image

    from thyro.data.decode import read_image

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

    one = _pipeline(model, archive, os.path.join(tmp, "out1"), sets)
    assert one["counts"]["ok"] == args.n, one["counts"]
    # The same settings at scale x n: the RSS ratio, and the marginal rate (what each further
    # image costs once the actors are up: a large archive's rate).
    big = one if args.skip_10x else _pipeline(
        model, _archive(tmp, args.n * args.scale, args.size, args.layout, args.format),
        os.path.join(tmp, "out10"), sets)
    return c, one, big


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--layout", default="simple", choices=["simple", "scanner"], help="the phantom's screens")
    ap.add_argument("--format", default="png", choices=["png", "jpeg"], help="how the archive stores them")
    ap.add_argument("--preset", default=None, help="score with this preprocessing preset instead of the card's")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sample", type=int, default=128, help="images for the per-stage table")
    ap.add_argument("--set", action="append", default=[], help="config override for the pipeline, e.g. score.threads=2")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="for (a), (b), (c) alike")
    ap.add_argument("--skip-10x", action="store_true")
    ap.add_argument("--stages-only", action="store_true", help="(a), (d) and the stage table; no Ray")
    args = ap.parse_args()

    import numpy as np
    import torch

    from thyro.data.sources import Item
    from thyro.model.predictor import Predictor
    from thyro.model.scoring import prepare

    tmp = tempfile.mkdtemp(prefix="thyro-bench-")
    try:
        model = _with_preset(args.model, args.preset, tmp) if args.preset else args.model
        archive = _archive(tmp, args.n, args.size, args.layout, args.format)
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(archive) for f in fs)
        p = Predictor(model, cam_size=56, precision=args.precision)
        sets = [f"score.precision={args.precision}", f"score.batch_size={args.batch}", *args.set]
        batches = [torch.from_numpy(np.stack([prepare(Item(f), p.preset)[0]["pixels"] for f in files[i:i + args.batch]]))
                   for i in range(0, min(len(files), 8 * args.batch), args.batch)]
        p.predict_tensor(batches[0])  # warm-up
        t = time.perf_counter()
        for x in batches:
            p.predict_tensor(x)
        a = sum(len(x) for x in batches) / (time.perf_counter() - t)

        from pytorch_grad_cam import GradCAM as OracleCAM
        with OracleCAM(model=p.model, target_layers=[p.layer]) as oracle:
            oracle(input_tensor=batches[0].to(p.device), targets=None)
            t = time.perf_counter()
            for x in batches:
                x = x.to(p.device)  # as (a)'s predict_tensor does
                with torch.no_grad():
                    torch.softmax(p.model(x), 1)  # the prediction, then the map
                oracle(input_tensor=x, targets=None)
            d = sum(len(x) for x in batches) / (time.perf_counter() - t)

        # Every stage's cost on one core, on the pipeline's own functions. On a CPU-only node
        # the stages share the cores with the model: that is the ceiling b can reach here.
        cores = os.cpu_count() or 1
        st = _stages(p, model, files[:args.sample], sets, tmp, cores * 1000 / a)
        non_model = sum(st["non_model"].values())
        ceiling = cores * 1000 / (st["actor"] + non_model)
        ceiling_block = cores * 1000 / st["block"] if st["block"] else None

        if not args.stages_only:
            c, one, big = _ends(args, p, model, files, archive, sets, tmp)
        print(f"settings: {args.layout} {args.size} px {args.format}, preset {p.preset.name} "
              f"({p.preset.image_size} px, field {p.preset.field}, marks {p.preset.suppress_marks}), "
              f"{args.precision}, batch {args.batch}; {args.set or 'defaults'}")
        print(f"per-stage cost, core-ms per image ({len(files[:args.sample])} images, one thread each):")
        for k, v in st["non_model"].items():
            print(f"  {k:34s} {v:7.2f}")
        print(f"  {'non-model total':34s} {non_model:7.2f}   (goal <= 1.5 at 128 px)")
        print(f"  {'forward + CAM, actor':34s} {st['actor']:7.2f}   ({st['actor_threads']} threads x wall; "
              f"bare predictor {st['bare']:.2f})")
        print(f"ceiling on {cores} cores, model stage + non-model stages: {ceiling:7.1f} img/s")
        if ceiling_block:
            print(f"  fused actor's whole call, measured  {st['block']:7.2f} core-ms per image (one thread; the "
                  f"stages' sum is {st['actor'] + non_model:.2f}): ceiling {ceiling_block:.1f} img/s")
        print(f"(a) bare predictor, forward + CAM : {a:7.1f} img/s")
        if args.stages_only:
            print(f"(d) pytorch-grad-cam, same batches: {d:7.1f} img/s; a/d = {a / d:.2f}")
            return
        b = args.n / one["seconds"]
        b_cold = args.n / (one["seconds"] + one["startup"])
        print(f"(b) full pipeline, end to end     : {b:7.1f} img/s  ({args.n} images, {one['seconds']:.1f}s on a "
              f"running cluster; {b_cold:.1f} img/s counting Ray start-up, {one['startup']:.1f}s; {one['plan']})")
        marginal = None
        if big is not one:
            marginal = args.n * (args.scale - 1) / (big["seconds"] - one["seconds"])
            print(f"(b') marginal rate, {args.n} -> {args.n * args.scale} images: {marginal:7.1f} img/s "
                  f"({big['seconds']:.1f}s - {one['seconds']:.1f}s; b'/a = {marginal / a:.2f}, "
                  f"b'/ceiling = {marginal / ceiling:.2f}"
                  + (f", b'/measured-call ceiling = {marginal / ceiling_block:.2f}" if ceiling_block else "")
                  + "): the fixed costs (actor start, first and last block, per-file rows) left out")
            print(f"     fixed cost of a run, t(n) - n / b': {one['seconds'] - args.n / marginal:.1f}s of the "
                  f"{one['seconds']:.1f}s at {args.n} images")
        print(f"(c) naive per-image loop          : {c:7.1f} img/s")
        print(f"(d) pytorch-grad-cam, same batches: {d:7.1f} img/s")
        print(f"b/ceiling = {b / ceiling:.2f} (>= 0.9)   b/a = {b / a:.2f} (>= 0.6 on 2 cores)   "
              f"b/c = {b / c:.2f}   a/d = {a / d:.2f} (>= 1.5)")
        print(f"driver peak RSS: {one['rss_mb']:.0f} MB at {args.n} images, {big['rss_mb']:.0f} MB at "
              f"{args.n * args.scale}: ratio {big['rss_mb'] / one['rss_mb']:.2f} (<= 1.2)")
        print("RESULT " + json.dumps({"a": a, "b": b, "c": c, "d": d, "ceiling": ceiling, "ceiling_block": ceiling_block, "non_model_ms": non_model, "b_marginal": marginal,
                                      "rss_ratio": big["rss_mb"] / one["rss_mb"], "device": str(p.device)}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
