"""Ray overhead of the experiment job: the same training work through Ray Tune +
Train and in a plain single-process loop; prints both wall times, the ratio, and
where the experiment's extra time goes.

    python benchmarks/experiment_overhead.py [--config configs/demo.yaml] [--epochs 10] [--splits 0 1]

Both sides train the same models on the same splits with the same config; the
plain loop runs them one after another in this process (all cores to torch),
the experiment as Tune trials (CPUs split between concurrent trials). With
train.crop_cache (the default) both crop every image once per preset and
start every training from those crops: the loop in this process, the job in Ray
tasks before its trials (`--set train.crop_cache=false`: both crop per training). The
experiment side includes everything a user waits for: Ray start, trial
scheduling, statistics and the report (CAM analysis is off: it is not training work).

Breakdown of the experiment's wall time: set-up (Ray start, inputs) until the
grid starts; the trials phase, with each trial's start and end (from Tune's
result files, 1 s resolution) and the seconds during which only one trial ran;
statistics and the report after the last trial.
"""

import argparse
import glob
import json
import os
import tempfile
import time

from thyro.config import load_config, parse_override


def trial_spans(state_dir: str) -> list[dict]:
    """(model, split, start, end) of each Tune trial, in Unix seconds, from its result.json."""
    spans = []
    for path in glob.glob(os.path.join(state_dir, "*", "result.json")):
        rows = [json.loads(ln) for ln in open(path) if ln.strip()]
        if not rows:
            continue
        last = rows[-1]
        end = float(last["timestamp"])
        epochs = [r for r in rows if "epoch" in r]
        # start-up inside the trial (Train controller, worker, data, model): the first
        # report's time less one epoch (the second epoch's time stands in for the first)
        startup = (float(epochs[0]["time_total_s"]) - float(epochs[1]["time_this_iter_s"])
                   if len(epochs) >= 2 else float("nan"))
        spans.append({"model": last.get("model"), "split": last.get("repeat"),
                      "start": end - float(last["time_total_s"]), "end": end, "startup": startup})
    return sorted(spans, key=lambda s: s["start"])


def alone_seconds(spans: list[dict], t_from: float, t_to: float) -> tuple[float, float]:
    """-> (seconds with exactly one trial running, seconds with none) between t_from and t_to."""
    edges = sorted({t_from, t_to, *[s["start"] for s in spans], *[s["end"] for s in spans]})
    one = none = 0.0
    for a, b in zip(edges, edges[1:]):
        if a < t_from or b > t_to:
            continue
        n = sum(s["start"] <= a and s["end"] >= b for s in spans)
        one += (b - a) * (n == 1)
        none += (b - a) * (n == 0)
    return one, none


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--splits", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(args.config, [parse_override(s) for s in args.set] + [
        {"train": {"epochs": args.epochs}, "experiment": {"splits": args.splits, "cam_analysis": False}}])

    from thyro.data import crop_cache
    from thyro.data.inputs import prepare_inputs, read_parquet
    from thyro.model.training import resolve_preset_for, train_run

    with tempfile.TemporaryDirectory() as tmp:
        m_uri, s_uri = prepare_inputs(cfg, f"{tmp}/inputs", log=lambda s: None)  # phantom made once, outside timing
        manifest, splits = read_parquet(m_uri), read_parquet(s_uri)
        t0 = time.perf_counter()
        per, crops = [], {}
        for model in cfg.experiment.models:
            for s in args.splits:
                c = cfg.model_copy(deep=True)
                c.model.name, c.split.repeat = model, s
                t1 = time.perf_counter()
                if cfg.train.crop_cache:  # as the job does: each preset's crops made once, then shared
                    d = crop_cache.cache_dir(f"{tmp}/plain/crops", resolve_preset_for(c))
                    if d not in crops:
                        crop_cache.build(manifest["path"].tolist(), resolve_preset_for(c), d)
                        crops[d] = crop_cache.load_with_hashes(d)
                made = crops.get(d) if cfg.train.crop_cache else (None, None)
                train_run(c, f"{tmp}/plain/{model}/{s}", manifest, None, splits, log=lambda s: None,
                          crops=made[0], hashes=made[1])
                per.append(f"{model}/{s} {time.perf_counter() - t1:.1f}s")
        plain = time.perf_counter() - t0
        print(f"plain loop : {plain:7.1f}s  ({len(cfg.experiment.models) * len(args.splits)} trainings: "
              f"{', '.join(per)})", flush=True)

        from thyro.distributed.experiment import run_experiment

        marks = {}

        def log(s: str) -> None:  # the job's own progress lines mark the phases
            for key in ("experiment:", "trials:"):
                if s.startswith(key):
                    marks[key] = time.time()

        w0, t0 = time.time(), time.perf_counter()
        res = run_experiment(cfg, f"{tmp}/exp", log=log)
        ray_s = time.perf_counter() - t0
        w1 = w0 + ray_s
        print(f"experiment : {ray_s:7.1f}s  ({len(res.trials)} trials on Ray Tune + Train)")
        print(f"ratio experiment/plain: {ray_s / plain:.2f}  (goal <= 1.2)")

        spans = trial_spans(os.path.join(tmp, "exp", "ray", "experiment"))
        g0, g1 = marks.get("experiment:", w0), marks.get("trials:", w1)
        print("breakdown of the experiment (s):")
        print(f"  set-up (Ray start, inputs, crops)   {g0 - w0:6.1f}")
        print(f"  trials phase (Tune grid)            {g1 - g0:6.1f}")
        if spans:
            one, none = alone_seconds(spans, g0, g1)
            print(f"    first trial starts after          {spans[0]['start'] - g0:6.1f}")
            print(f"    one trial running alone           {one:6.1f}")
            print(f"    no trial running                  {none:6.1f}")
            print(f"    grid ends after the last trial    {g1 - max(s['end'] for s in spans):6.1f}")
            for s in spans:
                print(f"    {s['model']:>12}/{s['split']}  {s['start'] - g0:6.1f} .. {s['end'] - g0:6.1f}"
                      f"  ({s['end'] - s['start']:.1f}; start-up in the trial {s['startup']:.1f})")
        print(f"  statistics and report               {w1 - g1:6.1f}")


if __name__ == "__main__":
    main()
