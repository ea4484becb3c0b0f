"""`thyro` command line: thin wrappers that build a Config and call one library function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from thyro.config import ConfigError, load_config, parse_override
from thyro.stats.metrics import METRIC_NAMES


# Without --config every command reads the checkout's configs/default.yaml (the README's
# main job), so `thyro train` and `thyro experiment` do what the README says they do.
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def default_config() -> str | None:
    """configs/default.yaml of this checkout (or container image); None where thyro is installed
    without it, and the library defaults apply."""
    return str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None


def _add_config_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    default = default or default_config()
    p.add_argument("--config", default=default,
                   help=f"YAML config file (see configs/); default: {default or 'the library defaults'}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.epochs=3 (repeatable)")


def _config(args, flag_overrides: dict):
    overrides = [parse_override(s) for s in args.set]
    flags = {}
    for dotted, value in flag_overrides.items():
        if value is not None:
            node = flags
            *parents, leaf = dotted.split(".")
            for k in parents:
                node = node.setdefault(k, {})
            node[leaf] = value
    return load_config(args.config, [flags, *overrides])


def cmd_phantom(args) -> int:
    from thyro.data import phantom

    manifest = phantom.generate(args.out, n_benign=args.n_benign, n_malignant=args.n_malignant,
                                size=args.size, seed=args.seed, overlap=args.overlap,
                                multi_image_fraction=args.multi_image_fraction, layout=args.layout,
                                shortcuts=args.shortcuts)
    print(f"wrote {args.n_benign + args.n_malignant} images and {manifest}")
    return 0


def cmd_train(args) -> int:
    from thyro.model.training import train_run

    cfg = _config(args, {"data.source": args.data, "model.name": args.model, "train.epochs": args.epochs,
                         "split.repeat": args.split})
    res = train_run(cfg, args.out)
    m = res.metrics
    print(f"\n{cfg.model.name} on split {cfg.split.repeat} ({res.seconds:.0f}s) -> {args.out}")
    for k in METRIC_NAMES:
        lo, hi = m["ci95"].get(k, (float("nan"), float("nan")))
        print(f"  {k:<12}{m[k]:.3f}  (95% CI {lo:.3f}-{hi:.3f})")
    t = m["at_target_sensitivity"]
    print(f"  at sensitivity >= {t['target_sensitivity']:.2f}: threshold {t['threshold']:.3f}, "
          f"specificity {t['specificity']:.3f};  ECE {m['ece']:.3f}")
    if args.json:
        print(json.dumps({k: m[k] for k in METRIC_NAMES}))
    return 0


def print_summary(summary, reference: str) -> None:
    cols = METRIC_NAMES
    print(f"\n{'model':<14}" + "".join(f"{c:>22}" for c in cols) + f"{'p vs ' + reference:>16}")
    for _, r in summary.iterrows():
        cells = "".join(f"{r[c + '_mean']:>8.3f} [{r[c + '_ci_low']:.3f},{r[c + '_ci_high']:.3f}]" for c in cols)
        p = r.get("p_vs_reference_corrected_t")
        print(f"{r['model']:<14}{cells}{'' if p is None or p != p else f'{p:>16.3g}'}")


def cmd_experiment(args) -> int:
    from thyro.distributed.experiment import run_experiment

    cfg = _config(args, {"data.source": args.data})
    res = run_experiment(cfg, args.out)
    print_summary(res.summary, cfg.experiment.reference_model)
    print(f"\n{len(res.trials)} trials in {res.seconds:.0f}s; mean [bootstrap 95% CI] over splits")
    print(f"summary: {res.out}/summary.csv  trials: {res.out}/trials.parquet  report: {res.report}")
    return 0


def cmd_tune(args) -> int:
    from thyro.distributed.tune import run_tune

    cfg = _config(args, {"data.source": args.data})
    res = run_tune(cfg, args.out)
    print(f"\n{'val_auc':>8}  {'epochs':>6}  hyperparameters (best first)")
    for _, r in res.trials.head(10).iterrows():
        hp = ", ".join(f"{k.split('.')[1]}={r[k]:.3g}" if isinstance(r[k], float) else f"{k.split('.')[1]}={r[k]}"
                       for k in res.best_params)
        print(f"{r['val_auc']:>8.3f}  {int(r['epochs_run']):>6}  {hp}")
    print(f"\n{len(res.trials)} configurations in {res.seconds:.0f}s; best config: {res.best_config}")
    print(f"next: thyro experiment --config {res.best_config}")
    return 0


def cmd_score(args) -> int:
    from thyro.distributed.score import run_score

    cfg = _config(args, {})
    res = run_score(cfg, args.model, args.input, args.output)
    c = res.counts
    print(f"\nscored {c['discovered']} inputs in {res.seconds:.0f}s: {c['ok']} ok, {c['error']} error rows, "
          f"{c.get('skipped', 0)} skipped ({c['previously_scored']} rows were already in the output)")
    print(f"parquet: {res.output}/predictions/  overlays: {res.output}/overlays/  manifest: {res.output}/run_manifest.json")
    return 0


def cmd_pretrain(args) -> int:
    from thyro.distributed.pretrain import run_pretrain

    cfg = _config(args, {})
    res = run_pretrain(cfg, args.input, args.out)
    c = res.counts
    resumed = f", resumed from step {res.resumed_from_step}" if res.resumed_from_step else ""
    print(f"\npretrained on {c['images']} images ({c['distinct_images']} distinct inputs by content; "
          f"{c['error']} error rows, {c['skipped']} skipped) in {res.seconds:.0f}s: {res.steps} steps{resumed}, "
          f"{res.images_per_s:.1f} images/s")
    print(f"backbone: {res.out}/backbone.pt  card: {res.out}/metadata.json  errors: {res.out}/errors/  "
          f"use it with --set model.weights={res.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="thyro", description="Thyroid nodule ultrasound classification "
                                 "with Grad-CAM (research use only, not for diagnosis).")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("phantom", help="write the synthetic ultrasound phantom data set")
    p.add_argument("--out", required=True)
    p.add_argument("--n-benign", type=int, default=415)
    p.add_argument("--n-malignant", type=int, default=93)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overlap", type=float, default=0.0, help="0: the feature tables as they are; 1: classes identical")
    p.add_argument("--multi-image-fraction", type=float, default=0.0,
                   help="fraction of patients with several images")
    p.add_argument("--layout", choices=["simple", "scanner"], default="simple",
                   help="simple: square grey scans; scanner: screens with scanner overlays")
    p.add_argument("--shortcuts", type=float, default=0.0,
                   help="0..1: how much the scanner overlays depend on the class (scanner layout)")
    p.set_defaults(fn=cmd_phantom)

    p = sub.add_parser("train", help="train and evaluate one model on one split (plain torch)")
    p.add_argument("--data", help="folder with benign/ malignant/, a CSV manifest, or 'phantom'")
    p.add_argument("--out", required=True, help="run folder (local path or URI)")
    p.add_argument("--model", help="resnet18 | alexnet | vgg16 | inception_v3")
    p.add_argument("--epochs", type=int)
    p.add_argument("--split", type=int, help="which split repetition (default 0)")
    p.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    _add_config_args(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("experiment", help="the study's protocol: model x split trials on Ray Tune + Train")
    p.add_argument("--data", help="folder, CSV manifest or 'phantom' (default: config)")
    p.add_argument("--out", default="runs/experiment", help="output folder or s3:// URI")
    _add_config_args(p)
    p.set_defaults(fn=cmd_experiment)

    p = sub.add_parser("tune", help="hyperparameter search (Ray Tune, ASHA, nested inner splits)")
    p.add_argument("--data", help="folder, CSV manifest or 'phantom' (default: config)")
    p.add_argument("--out", default="runs/tune", help="output folder or s3:// URI")
    _add_config_args(p)
    p.set_defaults(fn=cmd_tune)

    p = sub.add_parser("score", help="score an archive with a saved run (Ray Data): Parquet + Grad-CAM overlays")
    p.add_argument("--model", required=True, help="saved run folder or URI (thyro train / experiment)")
    p.add_argument("--input", required=True, help="folder, s3:// prefix, .zip, .tar(.gz), .csv manifest or a file")
    p.add_argument("--output", required=True, help="output folder or s3:// URI")
    _add_config_args(p)
    p.set_defaults(fn=cmd_score)

    p = sub.add_parser("pretrain", help="self-supervised pretraining (SimSiam) on unlabelled images: "
                       "Ray Data -> Ray Train, resumable")
    p.add_argument("--input", required=True, help="folder, s3:// prefix, .zip, .tar(.gz), .csv manifest or a file")
    p.add_argument("--out", required=True, help="output folder or s3:// URI (backbone.pt, metadata.json)")
    pretrain_yaml = DEFAULT_CONFIG.with_name("pretrain.yaml")
    _add_config_args(p, str(pretrain_yaml) if pretrain_yaml.is_file() else None)
    p.set_defaults(fn=cmd_pretrain)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"thyro: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"thyro {args.cmd}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
