"""Ray Data knobs of the score job, measured: pipeline img/s over a small grid.

    python benchmarks/score_knobs.py --model RUN_DIR [--n 600] [--preset study]

Each setting runs the score job in a fresh process on the same JPEG archive
(benchmarks/score_throughput.py's phantom screens): the stage layout and pool
(`score.stages`, `actors`, `threads`), items per block (`score.block_batches`),
batches queued per predictor actor (`score.tasks_in_flight_per_actor`). README's
"Ray Data knobs" table comes from it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from score_throughput import _archive, _pipeline, _with_preset  # noqa: E402

GRID = [{"score.stages": "fused"},  # the CPU default: one single-threaded actor per core
        {"score.stages": "fused", "score.actors": 1},  # one actor, the node's cores as threads
        {"score.stages": "split", "score.actors": 1},  # the GPU layout (and this job's layout before)
        {"score.stages": "split", "score.actors": 1, "score.threads": 1},
        {"score.stages": "fused", "score.block_batches": 1},
        {"score.stages": "fused", "score.block_batches": 4},
        {"score.stages": "split", "score.actors": 1, "score.tasks_in_flight_per_actor": 1},
        {"score.stages": "split", "score.actors": 1, "score.tasks_in_flight_per_actor": 4}]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--preset", default="study")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="thyro-knobs-")
    try:
        model = _with_preset(args.model, args.preset, tmp) if args.preset else args.model
        archive = _archive(tmp, args.n, 480, "scanner", "jpeg")
        print(f"{args.n} JPEG screens (640x480-ish), preset {args.preset}; {args.set or 'defaults'}")
        for k, g in enumerate(GRID):
            sets = [*args.set, *(f"{key}={v}" for key, v in g.items())]
            r = _pipeline(model, archive, os.path.join(tmp, f"out{k}"), sets)
            name = ", ".join(f"{key.split('.')[1]}={v}" for key, v in g.items()) + f" [{r['plan']}]"
            print(f"  {name}: {args.n / r['seconds']:6.1f} img/s ({r['seconds']:.1f}s)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
