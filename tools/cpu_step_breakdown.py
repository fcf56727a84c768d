"""Where a CPU decode step's time goes: the weight products alone against the whole step, fp32 and bf16."""

# PYTHONPATH=. python tools/cpu_step_breakdown.py [--model opt-125m] [--rounds 3]
# OPT random weights in a real shape, the CPU engine as generate() runs it (one prompt), 128 steps a round; the
# products are every weight matrix of a step (q/k/v packed, out, fc1, fc2, lm_head) times one row, back to back.

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time

import torch

from helpers.generation.backends.cpu_engine import CpuEngine, one_torch_thread
from helpers.opt.random_weights import random_model

STEPS = 128


def seconds(run, repeats: int) -> float:
    """The mean time of `run` over `repeats` calls, after three unmeasured ones."""
    for _ in range(3):
        run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


def measure(model, weight_bytes: int) -> str:
    """One round for one model: a step, the products alone, and what the rest of a step takes."""
    engine = CpuEngine(model)
    config = model.config
    calls = []
    for layer in engine.layers:
        x, wide = torch.randn(1, config.hidden_size), torch.randn(1, config.ffn_dim)
        calls += [(layer.qkv, x), (layer.out, x), (layer.fc1, x), (layer.fc2, wide)]
    calls.append((engine.lm_head, torch.randn(1, config.word_embed_proj_dim)))
    threads = one_torch_thread() if engine.numpy_blas else contextlib.nullcontext()
    with threads, torch.inference_mode():
        sequence = engine.sequence(12, STEPS + 8)
        sequence.prefill(list(range(2, 14)))
        step = seconds(lambda: sequence.step(5), STEPS)
        product = seconds(lambda: [f(x) for f, x in calls], 30)
    return (f"step {step * 1e3:.2f} ms, products {product * 1e3:.2f} ms ({weight_bytes / product / 1e9:.1f} GB/s), "
            f"the rest {(step - product) * 1e3:.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="opt-125m")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    fp32 = random_model(args.model, dtype=torch.float32).eval()
    models = {"fp32": fp32, "bf16": copy.deepcopy(fp32).to(torch.bfloat16)}
    print(f"{args.model} (random weights), one decode step of the CPU engine, torch threads {torch.get_num_threads()}")
    read = {name: sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                      if p.dim() == 2 and "embed_positions" not in n) for name, model in models.items()}
    for round_number in range(1, args.rounds + 1):  # interleaved: a busy spell of the machine falls on both
        for name, model in models.items():
            print(f"round {round_number}, {name}: {measure(model, read[name])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
