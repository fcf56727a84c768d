"""`plan --check`: load with a plan under a budget, generate, compare predicted and measured peaks."""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Callable

import torch

from helpers.analysis.benchmark import hardware_facts, prompt_of_length
from helpers.generation.run import generate
from helpers.generation.settings import GenerationSettings
from helpers.loading.model import load_model
from helpers.loading.sources import size_of
from helpers.memory.bytes import parse_bytes
from helpers.memory.measure import PeakMemory, release_freed_memory
from helpers.memory.planner import Budget, choose, plan
from helpers.opt.random_weights import random_model, save_random_model
from helpers.opt.sizes import OPTSize, find_size
from helpers.opt.tokenizer import opt_tokenizer

# ------------------------------------------------------------------------------------------ plan checks


def check_plan(model: str, plan_name: str = "auto", *, gpu_memory: str | int | None = None,
               cpu_memory: str | int | None = None, prompt_tokens: int = 16, new_tokens: int = 256,
               generation_method: str = "auto", progress: Callable[[str], None] = lambda line: None) -> dict:
    """Load `model` (random weights in a size's real shape, or a folder) with a memory plan and generate
    `new_tokens` under the budget (on a GPU, capped with `set_per_process_memory_fraction`, as a T4's
    15 GiB in a bigger card), then compare the planner's predicted peak with the measured one: GPU
    memory allocated (first GPU) when the plan uses a GPU, else the growth of resident memory.
    `generation_method` is `generate()`'s (its default picks the static cache, compiled, on one GPU)."""
    budget = Budget.of_machine(gpu_bytes=None if gpu_memory is None else parse_bytes(gpu_memory),
                               cpu_bytes=None if cpu_memory is None else parse_bytes(cpu_memory))
    size = size_of(model)
    context = prompt_tokens + new_tokens
    option = choose(plan(size, budget, context=context), plan_name, model=size.name, budget=budget)
    uses_gpu = bool(option.gpu_bytes_each)
    if uses_gpu and gpu_memory is not None:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget.gpu_bytes / total), 0)
    folder, tmp = model, None
    try:  # the temporary folder goes however this ends (an error, Ctrl-C, SIGTERM through helpers.signals)
        if find_size(model) is not None:
            # stored as the plan keeps them (bf16-cpu from an fp32 file would count the file's pages, read to convert)
            stored = torch.float16 if uses_gpu else torch.bfloat16 if option.dtype == "bfloat16" else torch.float32
            tmp = _random_weights_folder(size, stored, progress)
            folder = tmp.name
        _warm_up_imports()
        release_freed_memory()  # freed heap pages go back to the OS, so new allocations show in RSS
        progress(f"loading with plan {option.plan}")
        with PeakMemory("cuda:0" if uses_gpu else "cpu") as peak:
            loaded = load_model(folder, plan=option.plan, gpu_memory=gpu_memory, cpu_memory=cpu_memory,
                                context=context)
            prompt = prompt_of_length(loaded.tokenizer, prompt_tokens)
            progress(f"generating {new_tokens} tokens")
            result = loaded.generate(prompt, GenerationSettings.greedy(max_new_tokens=new_tokens,
                                                                        min_new_tokens=new_tokens),
                                     method=generation_method)
        measured = peak.added
        predicted = option.predicted_peak_bytes
        loaded.unload()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {
        "schema": "opt-notebooks/plan-check/v1", "model": size.name, "plan": option.plan,
        "method": option.plan,  # the plan's name under its first, documented field name; read "plan"
        "budget": {"gpu_bytes": budget.gpu_bytes, "gpus": budget.gpus, "cpu_bytes": budget.cpu_bytes},
        "context": context, "measured_on": "cuda:0 allocated" if uses_gpu else "resident memory growth",
        "predicted_bytes": int(predicted), "measured_bytes": int(measured),
        "relative_error": (predicted - measured) / measured if measured else None,
        "new_tokens": len(result.token_ids), "tokens_per_second": result.timings.tokens_per_second,
        "generation_method": generation_method, "time_to_first_token": result.timings.time_to_first_token,
        "generate_seconds": result.timings.total_seconds,  # a first call: any compiling is in it
        "option": option.as_dict(), "hardware": hardware_facts(),
    }


def _random_weights_folder(size: OPTSize, dtype: torch.dtype, progress: Callable[[str], None]
                           ) -> tempfile.TemporaryDirectory:
    """Random weights in the size's shape, written once as safetensors: fp16 as published for a GPU plan,
    fp32 (as the CPU computes) otherwise."""
    progress(f"writing random {size.name} weights ({str(dtype)[6:]}) for the plan to load")
    tmp = tempfile.TemporaryDirectory(prefix="opt-plan-")
    try:
        save_random_model(size, tmp.name, dtype=dtype)
    except BaseException:  # an error, Ctrl-C or SIGTERM while writing: the folder goes with it
        tmp.cleanup()
        raise
    gc.collect()
    return tmp


def _warm_up_imports() -> None:
    """Import what loading and generating import on first use, so the baseline is the process's own."""
    model = random_model(OPTSize("warm-up", 2, 4, 64, 256, 64, True), dtype=torch.float32)
    tokenizer = opt_tokenizer()
    generate(model, tokenizer, "warm up", GenerationSettings.greedy(max_new_tokens=2))
    del model, tokenizer
    gc.collect()
