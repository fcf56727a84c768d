"""The leak check: load, generate and unload many times, recording what stays behind."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable

import torch

from helpers.analysis.benchmark import hardware_facts
from helpers.environment import resident_memory_bytes
from helpers.loading.model import load_model
from helpers.memory.measure import release_freed_memory
from helpers.opt.random_weights import save_random_model
from helpers.opt.sizes import find_size

# ------------------------------------------------------------------------------------------ leaks


def leak_check(model: str, cycles: int = 20, *, device: str = "auto", new_tokens: int = 16,
               progress: Callable[[str], None] = lambda line: None) -> dict:
    """Load, generate and unload `model` (a folder; or a size, as random weights in its shape) `cycles`
    times, the way a notebook user switches models all afternoon, and record after each unload the
    resident memory, the CUDA memory still allocated and the threads alive. Each cycle generates twice:
    once to the end and once streamed and stopped after a few tokens; every third cycle a generation
    also fails inside the model (an exception mid-stream), as a real fault would."""
    folder, tmp = model, None
    rss, cuda, threads, faults = [], [], [], 0
    try:
        if find_size(model) is not None:
            tmp = tempfile.TemporaryDirectory(prefix="opt-leaks-")
            folder = str(save_random_model(model, tmp.name, dtype=torch.float16))
        for cycle in range(cycles):
            loaded = load_model(folder) if device == "auto" else load_model(folder, device=device)
            loaded.generate("The memory of a long afternoon", max_new_tokens=new_tokens, do_sample=False)
            text_stream = loaded.stream("Stop me after three pieces", max_new_tokens=new_tokens * 4)
            for i, _ in enumerate(text_stream):
                if i == 2:
                    text_stream.stop()
            if cycle % 3 == 2:
                faults += _fault_mid_stream(loaded, new_tokens)
            loaded.unload()
            del loaded, text_stream
            release_freed_memory()
            rss.append(resident_memory_bytes())
            cuda.append(torch.cuda.memory_allocated() if torch.cuda.is_available() else 0)
            threads.append(threading.active_count())
            progress(f"cycle {cycle + 1}/{cycles}: resident {rss[-1] / 2**20:.0f} MiB, threads {threads[-1]}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {
        "schema": "opt-notebooks/leaks/v1", "model": model, "cycles": cycles, "faults_injected": faults,
        "resident_bytes_after_each": rss, "cuda_allocated_bytes_after_each": cuda, "threads_after_each": threads,
        "resident_growth_bytes": rss[-1] - rss[0] if rss else 0,
        "resident_growth_after_first_bytes": rss[-1] - rss[1] if len(rss) > 1 else 0,
        "hardware": hardware_facts(),
    }


class _InjectedFault(RuntimeError):
    pass


def _fault_mid_stream(loaded, new_tokens: int) -> int:
    """Make the model fail on its fourth step of a streamed generation; return 1 if it surfaced."""
    layer = loaded.model.model.decoder.layers[-1]
    calls = {"n": 0}

    def fail(module, args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise _InjectedFault("injected fault")

    handle = layer.register_forward_pre_hook(fail)
    try:
        for _ in loaded.stream("This one breaks", max_new_tokens=new_tokens, method="cached"):
            pass
    except _InjectedFault:
        return 1
    finally:
        handle.remove()
    return 0
