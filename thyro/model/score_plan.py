"""Where the score job's stages run: the predictor pool (fused or split stages, actors,
threads) and where JPEGs decode. Plain arithmetic over `score` config and cluster counts: the
Ray shell (`thyro.distributed.score`) sizes its pool with it, and a predictor built outside
Ray (`thyro.model.batch_scorer.BatchScorer`) takes the same threads."""

from __future__ import annotations

from dataclasses import dataclass


def decode_on_actor(s) -> bool:
    """score.decode_on: `actor` always, `cpu` never, `auto` when the actor has a GPU (nvjpeg)."""
    return s.decode_on == "actor" or (s.decode_on == "auto" and s.gpus_per_actor > 0)


@dataclass(frozen=True)
class PoolPlan:
    fused: bool
    actors: int
    min_actors: int
    threads: int


def pool_plan(s, cluster_cpus: float, cluster_gpus: float, node_cpus: int | None = None) -> PoolPlan:
    """How the predictor pool runs (score.stages, actors, min_actors, threads; 0 = auto).

    auto stages: split when the actor has a GPU (the CPU tasks decode and finish around it, so the
    GPU never waits on them), fused on CPU nodes. Auto actors: fused, one per CPU of the cluster,
    one torch thread each, the whole pool from the start (its single-threaded processes share the
    cores without OpenMP barriers stalling on a preempted thread); split, one per GPU the
    cluster's `gpus_per_actor` allows, else one. Auto threads: the node's cores over its actors."""
    fused = s.stages == "fused" or (s.stages == "auto" and s.gpus_per_actor == 0)
    if s.actors:
        actors, low = s.actors, min(s.min_actors, s.actors)
    elif fused:
        actors = low = max(1, int(cluster_cpus))
    else:
        actors = max(1, int(cluster_gpus // s.gpus_per_actor)) if s.gpus_per_actor else 1
        low = min(s.min_actors, actors)
    per_node = min(actors, node_cpus or actors) if fused else actors
    threads = s.threads or max(1, (node_cpus or int(cluster_cpus) or 1) // max(1, per_node))
    return PoolPlan(fused, actors, low, threads)
