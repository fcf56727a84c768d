"""The check's jobs, each run in a child process: loading RAM, a fit under the budget, a batch sweep, training."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from helpers.files import write_atomically
from helpers.memory.measure import MemorySampler, proc_status
from helpers.opt.sizes import OPTSize

from .profile import Unavailable
from .run import error_record, log_line
from .training import job_train

# ------------------------------------------------------------------------------------------ jobs (child processes)


def job_load_ram(folder: str, method: str, gpu_memory: int | None) -> dict:
    """Load `folder` with plan `method`, as a notebook would, in this fresh process; its peak resident
    memory, whole-process (imports and the CUDA context included), is what a Colab machine must hold."""
    from helpers.loading.model import load_model

    before = proc_status()
    with MemorySampler() as sampler:
        start = time.perf_counter()
        loaded = load_model(folder, plan=method, gpu_memory=gpu_memory)
        seconds = time.perf_counter() - start
    after = proc_status()
    peak = max(after.get("VmHWM", 0), after.get("VmRSS", 0), sampler.peaks["VmRSS"])  # the kernel's mark lags a little
    result = {
        "plan": loaded.info.plan.plan if loaded.info.plan else None, "device": loaded.info.device,
        "load_seconds": seconds, "weight_bytes": loaded.info.weight_bytes,
        "resident_before_bytes": before.get("VmRSS", 0), "resident_after_bytes": after.get("VmRSS", 0),
        "peak_resident_bytes": peak, "peak_sampled": sampler.peaks,
        "predicted_ram_bytes": loaded.info.plan.cpu_bytes if loaded.info.plan else None,
        "files": [{"name": p.name, "bytes": p.stat().st_size} for p in sorted(Path(folder).iterdir()) if p.is_file()],
    }
    loaded.unload()
    return result


def job_fit(folder: str, method: str, gpu_memory: int | None, context: int, new_tokens: int,
            generation_method: str) -> dict:
    """`plan --check` on `folder` under the budget with a `context`-token sequence: fits (and the peak
    against the prediction), or the memory it ran out of."""
    import torch

    from tools.plan_check import check_plan

    try:
        result = check_plan(folder, method, gpu_memory=gpu_memory, prompt_tokens=context - new_tokens,
                            new_tokens=new_tokens, generation_method=generation_method, progress=log_line)
    except Exception as exc:  # out of memory, also where a compiler wraps it in its own error
        if not isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) and "out of memory" not in str(exc).lower():
            raise
        peak = torch.cuda.max_memory_allocated(0) if torch.cuda.is_available() else None
        return {"fits": False, "error": f"{type(exc).__name__}: {str(exc)[:600]}", "peak_before_failure_bytes": peak,
                "context": context, "generation_method": generation_method}
    result.update(fits=True)
    return result


def job_sweep(size: dict, device: str, dtype: str, batches: list[int], new_tokens: int, repeats: int,
              report: str) -> dict:
    """generate()'s speed at each batch size (the bench harness, random weights made in place), its report
    written to `report`."""
    from helpers.analysis.benchmark import run_suite

    suite = run_suite(OPTSize(**size), ["auto"], device=device, dtype=dtype, batches=batches,
                      new_tokens=new_tokens, repeats=repeats, progress=log_line)
    suite.write(report)
    return {"report": report, "bandwidth": suite.bandwidth,
            "rows": [_speed_row(m.as_dict()) for m in suite.measurements]}


JOBS: dict[str, Callable[..., dict]] = {"load-ram": job_load_ram, "fit": job_fit, "sweep": job_sweep,
                                        "train": job_train}


def _speed_row(m: dict) -> dict:
    keys = ("method", "batch", "prompt_tokens", "new_tokens", "tokens_per_second", "decode_tokens_per_second", "time_to_first_token",
            "peak_memory_bytes", "roofline_fraction", "bandwidth_bytes_per_second", "first_call_seconds",
            "first_call_time_to_first_token", "first_call_extra_seconds", "skipped")
    return {k: m.get(k) for k in keys}


def run_job(job_file: Path) -> int:
    """The child's side: run one job, write {status, result | reason | error} next to its arguments."""
    spec = json.loads(job_file.read_text())
    try:
        outcome = {"status": "ok", "result": JOBS[spec["job"]](**spec["args"])}
    except Unavailable as exc:
        outcome = {"status": "unavailable", "reason": str(exc)}
    except BaseException as exc:  # recorded for the parent, whatever it is
        outcome = {"status": "failed", "error": error_record(exc)}
    write_atomically(spec["result"], json.dumps(outcome, default=str))
    return 0 if outcome["status"] == "ok" else 1
