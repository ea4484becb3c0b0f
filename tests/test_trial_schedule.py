"""The experiment's trial order (cost model, longest first) and the elastic thread count:
pure functions, checked against hand computations and Tune's own variant generator; and what a
trial's processes import."""

import pytest

from thyro.distributed.common import elastic_threads, own_threads
from thyro.distributed.experiment import TRAIN_COST, trial_cost, trial_order


def test_trial_cost_scales_with_pixels_and_uses_the_models_own_size():
    assert trial_cost("resnet18", 256) == pytest.approx(4.0)  # (256/128)^2
    assert trial_cost("inception_v3", None) == pytest.approx(TRAIN_COST["inception_v3"] * (299 / 128) ** 2)
    assert trial_cost("vgg16", None) == pytest.approx(TRAIN_COST["vgg16"] * (224 / 128) ** 2)


def test_longest_trials_first_ties_in_config_order():
    order = trial_order(["resnet18", "alexnet", "vgg16"], [0, 1], 128)
    assert [(t["model"], t["repeat"]) for t in order] == [
        ("vgg16", 0), ("vgg16", 1), ("alexnet", 0), ("alexnet", 1), ("resnet18", 0), ("resnet18", 1)]


def _makespan(costs, slots=2):
    """List scheduling as Tune runs a FIFO grid: the next trial goes to the first free slot."""
    free = [0.0] * slots
    for c in costs:
        i = free.index(min(free))
        free[i] += c
    return max(free)


def test_longest_first_shortens_the_study_grid_on_two_slots():
    # The study's grid: 4 models x 10 splits at their own sizes. Tune's product order
    # (model fastest) leaves a VGG trial running alone at the end; longest first does not.
    models, splits = ["resnet18", "alexnet", "inception_v3", "vgg16"], list(range(10))
    lpt = [trial_cost(t["model"], None) for t in trial_order(models, splits, None)]
    product = [trial_cost(m, None) for s in splits for m in models]
    total = sum(lpt)
    assert _makespan(lpt) < _makespan(product)
    assert _makespan(lpt) <= total / 2 + max(lpt) / 2 + 1e-9  # within half the longest trial of a perfect split


def test_tune_runs_a_single_grid_variable_in_the_order_given():
    from ray.tune import grid_search
    from ray.tune.search.variant_generator import generate_variants

    order = trial_order(["resnet18", "alexnet", "vgg16"], [0, 1, 2], 128)
    got = [spec["trial"] for _, spec in generate_variants({"trial": grid_search(order), "x": 1})]
    assert got == order
    # whereas a product of two grid variables runs model-fastest, whatever the costs
    prod = [(spec["model"], spec["repeat"]) for _, spec in generate_variants(
        {"model": grid_search(["resnet18", "vgg16"]), "repeat": grid_search([0, 1])})]
    assert prod == [("resnet18", 0), ("vgg16", 0), ("resnet18", 1), ("vgg16", 1)]


def test_own_threads_are_whole_cpus_at_least_one():
    assert [own_threads(c) for c in (0.5, 0.99, 1.0, 2.5, 4)] == [1, 1, 1, 2, 4]


@pytest.mark.parametrize("own, free, total, cap, expected", [
    (1, 1.0, 2, 0, 2),     # alone on a 2-CPU node (the other trial's worker and driver gone)
    (1, 0.0, 2, 0, 1),     # two trials: no CPU free
    (1, 0.99, 2, 0, 1),    # a starting trial's driver holds 0.01: no whole CPU free
    (1, 0.9999, 2, 0, 1),  # Ray's 1e-4 steps: still not a whole CPU
    (1, 5.5, 8, 0, 6),     # 8-CPU node, 5.5 free: five more
    (2, 7.0, 8, 0, 8),     # never more than the node has
    (1, 1.0, 2, 1, 1),     # train.threads caps it
    (3, 0.0, 2, 0, 2),     # an allotment above the node's CPUs is cut to them
])
def test_elastic_threads(own, free, total, cap, expected):
    assert elastic_threads(own, free, total, cap) == expected


def test_trial_processes_import_the_job_modules_without_the_statistics_stack():
    # Each Tune trial's driver process unpickles `_trial` (or `_search_trial`) by reference, so
    # imports its module: pandas, scipy and sklearn cost ~1 s of CPU there on this machine, per
    # trial, while trials start side by side. (Train's controller gets the loop as an object ref.)
    import subprocess
    import sys

    code = ("import sys\nimport thyro.distributed.experiment, thyro.distributed.tune\n"
            "print(sorted(m for m in ('pandas', 'scipy', 'sklearn', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
