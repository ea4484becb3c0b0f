"""score.stages / actors / threads resolved by `pool_plan`, by hand."""

from thyro.config import load_config
from thyro.model.score_plan import pool_plan


def _s(**score):
    return load_config(None, [{"score": score}]).score


def test_cpu_node_auto_is_fused_one_single_threaded_actor_per_core():
    p = pool_plan(_s(), cluster_cpus=2, cluster_gpus=0, node_cpus=2)
    assert (p.fused, p.actors, p.min_actors, p.threads) == (True, 2, 2, 1)


def test_gpu_actors_auto_split_one_per_gpu_and_the_node_cores_shared():
    p = pool_plan(_s(gpus_per_actor=0.5), cluster_cpus=16, cluster_gpus=2, node_cpus=16)
    assert (p.fused, p.actors, p.min_actors, p.threads) == (False, 4, 1, 4)


def test_explicit_settings_win():
    p = pool_plan(_s(stages="split", actors=3, min_actors=2, threads=5), cluster_cpus=8, cluster_gpus=0, node_cpus=8)
    assert (p.fused, p.actors, p.min_actors, p.threads) == (False, 3, 2, 5)
    p = pool_plan(_s(stages="fused", actors=1), cluster_cpus=2, cluster_gpus=0, node_cpus=2)
    assert (p.fused, p.actors, p.threads) == (True, 1, 2)  # a lone actor takes the node's cores


def test_fused_pool_across_nodes_keeps_one_thread_per_actor():
    p = pool_plan(_s(), cluster_cpus=32, cluster_gpus=0, node_cpus=16)
    assert (p.actors, p.threads) == (32, 1)


def test_the_score_driver_reads_cards_and_presets_without_torch():
    # torch + torchvision cost the driver ~3 s of CPU before any image moves (README, "score").
    import subprocess
    import sys

    code = ("import sys\nfrom thyro.distributed.score import run_score\nfrom thyro.model.score_output import file_rows\n"
            "from thyro.model.checkpoint import load_card\nfrom thyro.image.preset import Preset\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
