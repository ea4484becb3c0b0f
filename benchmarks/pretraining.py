"""Self-supervised pretraining benchmark: does a SimSiam backbone beat random init on BUSI?

    python benchmarks/pretraining.py --data ../shared/data/busi [--out runs/bench-pretrain]
        [--random-from runs/bench-real] [--imagenet resnet18-f37072fd.pth] [--splits 5] [--first-splits 3]
        [--pretrain-minutes 15] [--pretrain-size 96] [--pretrain-batch 32] [--pretrain-precision fp32]
        [--intensity 0.4] [--speckle 0.2] [--blur-p 0.5] [--crop-scale 0.3] [--threads 1]

1. Pretraining (plain PyTorch, thyro.model.pretraining; no Ray): SimSiam on the unlabelled images
   of --data (labels ignored) plus --phantom scanner-layout phantom screens, each cropped to
   its scan field by thyro.image.preprocess (preset `field`), two greyscale views per image
   (thyro.image.views). The backbone and its card go to <out>/ssl/ (reused when present).
   BUSI's test images are among the unlabelled images (pixels, never labels): the
   transductive setting of a hospital that pretrains on its whole archive.
2. Fine-tuning with the real-data benchmark's protocol (benchmarks/real_data.py: the same
   manifest with pseudo-patients, the same grouped splits, ResNet18, 30 epochs, 128 px,
   bf16, the `study` arm's preprocessing and recipe) from: random init; the SSL backbone;
   ImageNet weights when --imagenet FILE is given.
   --random-from DIR reuses DIR/study/splitNN (the real-data benchmark's study arm) as the
   random-init arm when their saved config is this protocol's (it says so).
3. Prints mean test AUC with the Nadeau-Bengio corrected 95% interval over splits, the mean
   paired difference to random init, median cam_in_field, and the pretraining's wall time
   and images/s. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def log(s: str) -> None:
    print(s, flush=True)


def unlabelled_images(args, preset):
    """-> (list of thyro.image.preprocess.Cropped, list of content sha256, source list)."""
    from thyro.data import phantom
    from thyro.data.decode import read_source
    from thyro.data.manifest import load_manifest
    from thyro.image.preprocess import read_crop
    from thyro.model.pretraining import content_sha256

    paths = load_manifest(args.data)["path"].tolist()
    sources = [args.data]
    if args.phantom:
        pdir = os.path.join(args.out, "phantom")
        manifest = os.path.join(pdir, "manifest.csv")
        if not os.path.exists(manifest):
            n_mal = max(1, args.phantom // 5)
            phantom.generate(pdir, n_benign=args.phantom - n_mal, n_malignant=n_mal, size=256, seed=7,
                             layout="scanner")
        paths += load_manifest(manifest)["path"].tolist()
        sources.append(f"thyro phantom (layout scanner, {args.phantom} screens, seed 7)")
    crops, hashes = [], []
    for p in paths:
        hashes.append(content_sha256(read_source(p)))
        crops.append(read_crop(p, preset))
    return crops, hashes, sources


def pretrain(args) -> tuple[str, dict]:
    import torch
    from torch.utils.data import DataLoader, Dataset

    from thyro.config import load_config
    from thyro.image.transforms import resolve_preset
    from thyro.image.views import TwoViews
    from thyro.model.engine import resolve_device
    from thyro.model.pretraining import make_optimizer, pretrain_card, pretrain_one_epoch, save_backbone
    from thyro.model.ssl import SimSiam

    folder = os.path.join(args.out, "ssl")
    if os.path.exists(os.path.join(folder, "metadata.json")):
        card = json.load(open(os.path.join(folder, "metadata.json")))
        log(f"pretraining: reusing {folder} ({card['training']['epochs']} epochs)")
        return folder, card
    cfg = load_config(None, [{"pretrain": {
        "epochs": args.pretrain_epochs, "batch_size": args.pretrain_batch, "lr": args.pretrain_lr,
        "optimizer": args.pretrain_optimizer, "weight_decay": args.pretrain_wd, "image_size": args.pretrain_size,
        "precision": args.pretrain_precision, "crop_scale": args.crop_scale, "intensity": args.intensity,
        "speckle": args.speckle, "blur_p": args.blur_p}}]).pretrain
    preset = resolve_preset(cfg.preset, image_size=cfg.image_size)
    t0 = time.perf_counter()
    crops, hashes, sources = unlabelled_images(args, preset)
    log(f"pretraining set: {len(crops)} images ({len(set(hashes))} distinct) cropped to the field "
        f"in {time.perf_counter() - t0:.0f} s")
    views = TwoViews(cfg.image_size, preset, **cfg.view_strengths())

    class Pairs(Dataset):
        def __len__(self):
            return len(crops)

        def __getitem__(self, i):
            return views(crops[i].image, crops[i].field_mask)

    torch.manual_seed(cfg.seed)
    loader = DataLoader(Pairs(), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    device = resolve_device("auto")
    model = SimSiam(cfg.backbone, cfg.proj_dim, cfg.pred_dim).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, cfg, len(loader))
    history, steps, images, t_train = [], 0, 0, time.perf_counter()
    batches = loader
    if args.pretrain_minutes:
        # This machine is shared and its speed varies by 3x within minutes: the cosine
        # schedule runs on wall time instead of steps, and pretraining stops when the
        # budget is spent (the predictor's rate stays constant, as in make_optimizer).
        budget = args.pretrain_minutes * 60
        frac = lambda: min(1.0, (time.perf_counter() - t_train) / budget)  # noqa: E731
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, [lambda _: 0.5 * (1 + np.cos(np.pi * frac())), lambda _: 1.0][:len(opt.param_groups)])

        def batches():
            for b in loader:
                if frac() >= 1.0:
                    return
                yield b
    for epoch in range(cfg.epochs):
        r = pretrain_one_epoch(model, batches() if callable(batches) else loader, opt, device, cfg.precision,
                               cfg.channels_last, sched)
        if r["steps"] == 0:
            break
        steps, images = steps + r["steps"], images + r["images"]
        history.append({"epoch": epoch + 1, "loss": r["loss"], "images_per_s": r["images_per_s"],
                        "z_std": r["z_std"]})
        log(f"  pretrain epoch {epoch + 1}: loss {r['loss']:.4f}  z_std {r['z_std']:.3f} "
            f"(collapsed 0, healthy ~{1 / np.sqrt(cfg.proj_dim):.3f})  {r['images_per_s']:.1f} images/s "
            f"(2 views each)  {r['seconds']:.0f} s")
    wall = time.perf_counter() - t_train
    throughput = {"wall_s": wall, "images_per_s": images / wall, "device": str(device),
                  "torch_threads": torch.get_num_threads()}
    epochs_run = len(history)
    card = pretrain_card(method=cfg.method, backbone=cfg.backbone, epochs=epochs_run, steps=steps,
                         distinct_images=len(set(hashes)), image_size=cfg.image_size, preset=preset.to_dict(),
                         views=views.strengths.to_dict(), final_loss=history[-1]["loss"], history=history,
                         optimizer={"optimizer": cfg.optimizer, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                                    "batch_size": cfg.batch_size, "precision": cfg.precision,
                                    "schedule": f"cosine over {args.pretrain_minutes} min of wall time"
                                    if args.pretrain_minutes else "cosine"},
                         throughput=throughput, sources=sources, name="bench-pretrain")
    save_backbone(folder, model, card)
    log(f"pretraining: {epochs_run} epochs, {steps} steps, {images} images in {wall / 60:.1f} min "
        f"({images / wall:.1f} images/s) -> {folder}")
    return folder, card


TRAINING_SECTIONS = ("name", "data", "preprocess", "model", "train", "split", "eval")


def same_protocol(run: str, expected: dict) -> bool:
    """Whether a saved run was made with `expected` (the resolved config), data source aside."""
    from thyro.config import yaml_load

    path = os.path.join(run, "config.yaml")
    if not os.path.exists(path) or not os.path.exists(os.path.join(run, "metadata.json")):
        return False
    saved = yaml_load(open(path).read())
    # What train_run reads, the data source's spelling aside (sections it never reads, such
    # as score: and pretrain:, gained keys after those runs were made).
    def strip(d):
        return {**{k: d.get(k) for k in TRAINING_SECTIONS},
                "data": {k: v for k, v in d["data"].items() if k != "source"}}

    return strip(saved) == strip(expected)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with benign/ malignant/ or a CSV manifest")
    ap.add_argument("--out", default="runs/bench-pretrain")
    ap.add_argument("--random-from", default=None,
                    help="the real-data benchmark's --out: its study/splitNN runs are the random-init arm if identical")
    ap.add_argument("--imagenet", default=None, help="torchvision's resnet18 state_dict file: adds the ImageNet arm")
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--first-splits", type=int, default=None, help="fine-tune on the first K splits only")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--phantom", type=int, default=200, help="phantom screens added to the unlabelled set")
    ap.add_argument("--pretrain-epochs", type=int, default=100, help="at most this many (see --pretrain-minutes)")
    ap.add_argument("--pretrain-size", type=int, default=96)
    ap.add_argument("--pretrain-minutes", type=float, default=15,
                    help="a wall-time budget: cosine schedule over it, stop when spent (<= --pretrain-epochs)")
    ap.add_argument("--pretrain-batch", type=int, default=32)
    ap.add_argument("--pretrain-lr", type=float, default=0.05)
    ap.add_argument("--pretrain-wd", type=float, default=1e-4)
    ap.add_argument("--pretrain-optimizer", default="sgd")
    ap.add_argument("--pretrain-precision", default="fp32",
                    help="fp32: on this 2-core EPYC, bf16 SimSiam steps ran at 4.1 vs 6.5 pairs/s (96 px)")
    ap.add_argument("--crop-scale", type=float, default=0.3)
    ap.add_argument("--intensity", type=float, default=0.4, help="gain/contrast/gamma jitter of the views")
    ap.add_argument("--speckle", type=float, default=0.2, help="sd of the views' speckle-like noise")
    ap.add_argument("--blur-p", type=float, default=0.5, help="probability of a blurred view")
    ap.add_argument("--pretrain-only", action="store_true", help="stop after pretraining (no fine-tuning)")
    ap.add_argument("--target-sensitivity", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    args = ap.parse_args()
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import torch

    from real_data import ARMS, base_config, run_arm
    from thyro.config import config_to_dict, load_config
    from thyro.data import storage
    from thyro.data.decode import decode
    from thyro.data.dedup import with_pseudo_patients
    from thyro.data.manifest import load_manifest
    from thyro.data.splits import make_splits

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    os.makedirs(args.out, exist_ok=True)
    t_all = time.perf_counter()
    cache = os.path.join(args.out, "manifest.parquet")
    reused_manifest = args.random_from and os.path.exists(os.path.join(args.random_from, "manifest.parquet"))
    if not os.path.exists(cache):
        if reused_manifest:  # the very pseudo-patients, hence the very splits, of the runs reused
            pd.read_parquet(os.path.join(args.random_from, "manifest.parquet")).to_parquet(cache)
        else:
            with_pseudo_patients(load_manifest(args.data), storage.read_bytes, decode).to_parquet(cache)
    manifest = pd.read_parquet(cache)
    splits = make_splits(manifest, args.splits, 0.3, 0)
    log(f"{len(manifest)} labelled images ({int(manifest.label.sum())} malignant) in "
        f"{manifest.patient_id.nunique()} near-duplicate groups; {args.splits} grouped splits "
        f"(fine-tuning on {args.first_splits or args.splits}); ResNet18, {args.size} px, {args.epochs} epochs, bf16")

    ssl_folder, card = pretrain(args)
    pre = card["training"]
    if args.pretrain_only:
        return 0

    k_max = args.first_splits or args.splits
    common = dict(data=args.data, out=args.out, manifest=manifest, splits=splits, n_splits=args.splits,
                  first_splits=args.first_splits, epochs=args.epochs, size=args.size,
                  target_sensitivity=args.target_sensitivity)
    arms = [("random", {}, "real-study")]
    arms.append(("ssl", {"model": {"weights": os.path.abspath(ssl_folder)}}, "pretrain-ssl"))
    if args.imagenet:
        arms.append(("imagenet", {"model": {"weights": os.path.abspath(args.imagenet)}}, "pretrain-imagenet"))
    rows = []
    for arm, overrides, name in arms:
        overrides = {**ARMS["study"], **overrides}
        run_dirs = None
        if arm == "random" and args.random_from:
            reuse = [os.path.join(args.random_from, "study", f"split{k:02d}") for k in range(k_max)]
            expected = [config_to_dict(load_config(None, [base_config(name, args.data, args.size, args.epochs,
                                                                       args.splits, k, args.target_sensitivity),
                                                           overrides])) for k in range(k_max)]
            if all(same_protocol(r, e) for r, e in zip(reuse, expected)):
                run_dirs = reuse
                log(f"random-init arm: reusing {args.random_from}/study/split00..{k_max - 1:02d} "
                    "(the real-data benchmark's study arm; same config, manifest and splits)")
            else:
                log(f"random-init arm: {args.random_from}/study runs differ from this protocol; training anew")
        row = run_arm(arm, overrides, name=name, run_dirs=run_dirs, **common)
        if row is not None:
            rows.append(row)

    base = next((r for r in rows if r["arm"] == "random"), None)
    log(f"\n{'init':<10}{'splits':>7}{'mean AUC [corrected 95% CI]':>30}{'vs random':>11}"
        f"{'spec / sens at thr':>22}{'median cam_in_field':>22}{'min':>6}")
    for r in rows:
        diff = np.mean(np.subtract(r["aucs"], base["aucs"][:len(r["aucs"])])) if base and r is not base else 0.0
        log(f"{r['arm']:<10}{r['splits']:>7}{r['auc']:>12.3f} [{r['lo']:.3f}, {r['hi']:.3f}]{diff:>+11.3f}"
            f"{r['spec']:>14.3f} / {r['sens']:.3f}{r['cif']:>22.3f}{r['minutes']:>6.1f}")
    tp = pre.get("throughput", {})
    log(f"SSL pretraining: SimSiam {pre['epochs']} epochs, {pre['steps']} steps, "
        f"{card['data']['distinct_images']} distinct images at {card['inputs']['image_size']} px, "
        f"{pre.get('precision')}, final loss {pre['final_loss']:.4f}; wall {tp.get('wall_s', float('nan')) / 60:.1f} min, "
        f"{tp.get('images_per_s', float('nan')):.1f} images/s (2 views each) on {tp.get('device')}")
    log(f"per-split AUCs: " + "; ".join(f"{r['arm']} " + ", ".join(f"{a:.3f}" for a in r["aucs"]) for r in rows))
    log(f"total wall {(time.perf_counter() - t_all) / 60:.1f} min")
    pd.DataFrame([{k: v for k, v in r.items() if k != "aucs"} for r in rows]).to_csv(
        os.path.join(args.out, "table.csv"), index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
