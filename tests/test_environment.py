"""Machine detection and the fit table."""

from dataclasses import replace

import pytest

from helpers import environment
from helpers.environment import GPU
from helpers.memory.planner import Budget, plan
from helpers.memory.summaries import fit_table
from helpers.units import human_bytes

T4 = GPU(0, "Tesla T4", 15 * 1024**3, 15 * 1024**3, (7, 5))


def test_detect_reports_this_machine():
    env = environment.detect()
    assert env.cpu_count >= 1 and env.ram_total_bytes >= env.ram_available_bytes > 0
    assert env.torch and env.transformers and not env.on_colab
    text = environment.report(env)
    assert "RAM" in text and "torch" in text


def test_fit_table_on_a_t4_says_what_fits():
    env = replace(environment.detect(), gpus=(T4,), ram_available_bytes=12 * 1024**3)
    rows = {r["model"]: r for r in fit_table(env)}
    fits = {name: row["fits Tesla T4"] for name, row in rows.items()}
    # OPT-6.7B in fp16 (12.4 GiB of weights, 1 GiB of cache at 2048, activations, the CUDA context) fits 15 GiB
    assert fits == {"opt-125m": True, "opt-350m": True, "opt-1.3b": True, "opt-2.7b": True, "opt-6.7b": True,
                    "opt-13b": False, "opt-30b": False, "opt-66b": False}
    assert rows["opt-1.3b"]["fits RAM in fp32 (CPU)"] and not rows["opt-2.7b"]["fits RAM in fp32 (CPU)"]  # 9.9 GiB + cache


@pytest.mark.parametrize("gpus", [(T4,), ()], ids=["t4", "no-gpu"])
@pytest.mark.parametrize("context", [2048, 256])
@pytest.mark.parametrize("ram_gib", [12, 2])
def test_fit_table_agrees_with_the_planner(gpus, context, ram_gib):
    """Every cell the fit table derives is the planner's: its fp16 option's needs and fits on this budget
    (the model picker's: with 2 GiB of RAM not even a GPU's model loads), its fp32-cpu option's fits."""
    env = replace(environment.detect(), gpus=gpus, ram_available_bytes=ram_gib * 1024**3)
    budget = Budget.of_machine(env)
    for row in fit_table(env, context=context):
        options = {o.plan: o for o in plan(row["model"], replace(budget, gpus=1, gpu_bytes=T4.total_bytes),
                                             context=context)}
        assert row["fp16 needs"] == human_bytes(options["fp16"].needs_bytes)
        here = {o.plan: o for o in plan(row["model"], budget, context=context)}
        assert row["fits RAM in fp32 (CPU)"] == here["fp32-cpu"].fits
        if gpus:
            assert row["fits Tesla T4"] == here["fp16"].fits
        else:
            assert row["fits a GPU"] == "no GPU" and "fp16" not in here


def test_fit_table_without_a_gpu_says_so():
    env = replace(environment.detect(), gpus=())
    assert all(row["fits a GPU"] == "no GPU" for row in fit_table(env))
