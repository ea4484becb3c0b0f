"""README's first command: the embedded demo (phantom -> experiment + report -> score job on a local S3).

    python -m jobs.demo [--config configs/demo.yaml] [--out runs/demo] [--no-s3] [--set key=value ...]
"""

import argparse
import os
import sys

from thyro.config import load_config, parse_override
from thyro.demo import format_summary, run_demo

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--no-s3", action="store_true", help="archive and scores in local folders, no S3 endpoint")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    # The demo's own local Ray cluster: say which auth mode, rather than let a
    # stray ~/.ray/auth_token decide (Ray 2.60).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cfg = load_config(args.config, [parse_override(s) for s in args.set])
    result = run_demo(cfg, args.out, s3=not args.no_s3)
    print(format_summary(result, cfg.experiment.reference_model))
    sys.exit(0)
