"""Ray overhead of the experiment job: the same training work through Ray Tune +
Train and in a plain single-process loop; prints both wall times and the ratio.

    python benchmarks/experiment_overhead.py [--config configs/demo.yaml] [--epochs 10] [--splits 0 1]

Both sides train the same models on the same splits with the same config; the
plain loop runs them one after another in this process (all cores to torch),
the experiment as Tune trials (CPUs split between concurrent trials). The
experiment side includes everything a user waits for: Ray start, trial
scheduling, statistics and the report (CAM analysis is off: it is not training work).
"""

import argparse
import tempfile
import time

from thyro.config import load_config, parse_override


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--splits", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(args.config, [parse_override(s) for s in args.set] + [
        {"train": {"epochs": args.epochs}, "experiment": {"splits": args.splits, "cam_analysis": False}}])

    from thyro.inputs import prepare_inputs, read_parquet
    from thyro.training import train_run

    with tempfile.TemporaryDirectory() as tmp:
        m_uri, s_uri = prepare_inputs(cfg, f"{tmp}/inputs", log=lambda s: None)  # phantom made once, outside timing
        manifest, splits = read_parquet(m_uri), read_parquet(s_uri)
        t0 = time.perf_counter()
        for model in cfg.experiment.models:
            for s in args.splits:
                c = cfg.model_copy(deep=True)
                c.model.name, c.split.repeat = model, s
                train_run(c, f"{tmp}/plain/{model}/{s}", manifest, None, splits, log=lambda s: None)
        plain = time.perf_counter() - t0
        print(f"plain loop : {plain:7.1f}s  ({len(cfg.experiment.models) * len(args.splits)} trainings)", flush=True)

        from thyro.ray_experiment import run_experiment

        t0 = time.perf_counter()
        res = run_experiment(cfg, f"{tmp}/exp", log=lambda s: None)
        ray_s = time.perf_counter() - t0
        print(f"experiment : {ray_s:7.1f}s  ({len(res.trials)} trials on Ray Tune + Train)")
        print(f"ratio experiment/plain: {ray_s / plain:.2f}  (goal <= 1.3)")


if __name__ == "__main__":
    main()
