"""Planner summaries: known machines, the best plan per size, the setup notebook's fit table."""

from __future__ import annotations

from dataclasses import replace

from ..environment import Environment, detect
from ..opt.sizes import SIZES, OPTSize
from ..units import human_bytes, human_count
from .bytes import GiB, kv_cache_bytes_per_token, weight_bytes
from .planner import Budget, Option, plan

# ------------------------------------------------------------------------------------------ summaries

KNOWN_MACHINES = {
    "Colab T4 (15 GiB, 12 GiB RAM)": Budget(15 * GiB, 1, 12 * GiB, gpu_name="Tesla T4"),
    "two T4s (the 2022 tutorial's machine)": Budget(15 * GiB, 2, 30 * GiB, gpu_name="Tesla T4"),
    "A100 80 GB": Budget(80 * GiB, 1, 80 * GiB, gpu_name="A100", bf16=True),
    "two A100 80 GB": Budget(80 * GiB, 2, 160 * GiB, gpu_name="A100", bf16=True),
    "H200 (141 GB)": Budget(139 * GiB, 1, 128 * GiB, gpu_name="NVIDIA H200", bf16=True),
}


def best_rows(budget: Budget, sizes: list[str] | None = None, context: int = 2048, batch: int = 1) -> list[dict]:
    """One row per size: the plan that would load it on `budget`, or why none would."""
    rows = []
    for name in sizes or list(SIZES):
        options = plan(name, budget, context=context, batch=batch)
        best = next((o for o in options if o.usable), None)
        if best is None:
            smallest = min(options, key=lambda o: o.gpu_bytes + o.cpu_bytes)
            rows.append({"model": name, "plan": "nothing fits", "GPU peak": human_bytes(smallest.gpu_bytes),
                         "RAM": human_bytes(smallest.cpu_bytes), "speed": "-", "quality": "-",
                         "note": f"smallest: {smallest.plan}"})
            continue
        row = best.row()
        rows.append({"model": name, "plan": best.plan, "GPU peak": row["GPU peak"], "RAM": row["RAM"],
                     "speed": row["speed"], "quality": best.quality,
                     "note": f"{human_bytes(best.disk_bytes)} on disk" if best.disk_bytes else ""})
    return rows


def placement_summary(option: Option) -> dict[str, int]:
    """How many decoder layers each device holds under `option`."""
    counts: dict[str, int] = {}
    for module, device in option.placement.items():
        if ".layers." in module:
            counts[device] = counts.get(device, 0) + 1
    return counts


def _fp16_and_cpu(size: OPTSize, budget: Budget, context: int) -> tuple[Option, Option]:
    """The planner's fp16-on-one-GPU option and its fp32-on-the-CPU one for `size` on `budget`. Without a GPU
    the fp16 option is planned on a notional one as large as the RAM: what it needs does not depend on the
    GPU's size."""
    options = plan(size, budget, context=context)
    gpu_options = options if budget.gpus else plan(size, replace(budget, gpus=1, gpu_bytes=budget.cpu_bytes),
                                                   context=context)
    fp16 = next(o for o in gpu_options if o.plan == "fp16")
    cpu = next(o for o in options if o.plan == "fp32-cpu")
    return fp16, cpu


def fit_table(env: Environment | None = None, context: int = 2048) -> list[dict]:
    """One row per OPT size: what fp16 weights and a `context`-token KV cache need, whether that loads on this
    machine's first GPU (with the RAM to load it), and whether the fp32 model fits the available RAM (for
    running on the CPU): the planner's fp16 and fp32-cpu verdicts on this machine, the model picker's."""
    env = env or detect()
    gpu = env.gpus[0] if env.gpus else None
    budget = Budget.of_machine(env)
    rows = []
    for size in SIZES.values():
        fp16, cpu = _fp16_and_cpu(size, budget, context)
        rows.append(
            {
                "model": size.name,
                "parameters": human_count(size.parameter_count()),
                "fp16 weights": human_bytes(weight_bytes(size, "float16")),
                f"KV cache @ {context}": human_bytes(kv_cache_bytes_per_token(size, "float16") * context),
                "fp16 needs": human_bytes(fp16.needs_bytes),
                f"fits {gpu.name if gpu else 'a GPU'}": fp16.fits if gpu else "no GPU",
                "fits RAM in fp32 (CPU)": cpu.fits,
            }
        )
    return rows
