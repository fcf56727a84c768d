"""`make gpu-check`: one prepared measuring run on one GPU (random weights in the real OPT shapes) that answers
what a Colab user asks (will it fit a T4, how much RAM does loading take, how fast, how long until the first
word) and writes benchmarks/gpu-*.json and figures; `--dry-run` runs the same steps on the CPU, tiny shapes.

Every step is recorded with its status (ok, unavailable, failed, skipped) and survives the others' failure;
steps that load under a budget run in a fresh child process, as a fresh notebook kernel would. A step starts
only if the time budget still holds it, and the run stops at a hard limit whatever happens.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .models import SIZES, OPTSize, weight_bytes
from .planner import KNOWN_MACHINES
from .preflight import REPO, preflight

SCHEMA = "opt-notebooks/gpu-check/v1"
T4 = KNOWN_MACHINES["Colab T4 (15 GiB, 12 GiB RAM)"]
# A free Colab's RAM as last reported, about 2 GB of which Colab's own processes use (shared/colab/README.md).
COLAB_RAM_BYTES = 12.7e9
COLAB_RAM_USED_AT_START_BYTES = 2e9
STATUSES = ("ok", "unavailable", "failed", "skipped")


@dataclass(frozen=True)
class Profile:
    """What one run measures, and with what."""

    name: str
    device: str
    dtype: str
    small: OPTSize  # every decoding method, and the load/unload cycles
    medium: OPTSize  # fp16 under a T4's budget with a full context, loading RAM, the batch sweep
    large: OPTSize  # 8-bit under the same budget
    fit_method: str  # the medium's plan
    quantized_method: str  # the large's plan
    gpu_memory: int | None  # the T4 budget the fits are checked under
    context: int  # tokens per sequence in the fit checks (OPT's whole context on a GPU)
    fit_new_tokens: int
    large_new_tokens: int
    methods: tuple[str, ...]  # the small model's, in order: the first pays any compilation in a fresh process
    new_tokens: int
    repeats: int
    sweep_batches: tuple[int, ...]
    sweep_new_tokens: int
    sweep_repeats: int
    shard_size: str  # the checkpoint shards, as the hub's
    leak_cycles: int
    budget_seconds: float
    grace_seconds: float  # past the budget, the hard limit
    estimates: dict[str, float] = field(default_factory=dict)  # seconds a step needs: it starts only if they are left


GPU = Profile(
    name="gpu", device="cuda", dtype="float16",
    small=SIZES["opt-1.3b"], medium=SIZES["opt-6.7b"], large=SIZES["opt-13b"],
    fit_method="fp16", quantized_method="int8", gpu_memory=T4.gpu_bytes, context=2048, fit_new_tokens=256,
    large_new_tokens=64, methods=("generate", "hf-generate", "static-cache", "bnb-int8", "bnb-nf4"),
    new_tokens=128, repeats=2, sweep_batches=(1, 2, 4, 8, 16, 32, 64), sweep_new_tokens=32, sweep_repeats=2,
    shard_size="10GB",  # transformers' former default: the hub's OPT-6.7B is two shards, 9.96 GB and 3.36 GB
    leak_cycles=5, budget_seconds=420, grace_seconds=90,
    # Guesses before any run (a step starts only if they are left): each run records what its steps took.
    estimates={"medium-folder": 15, "medium-load-ram": 25, "medium-fit": 60, "large-fit": 60, "small-folder": 5,
               "small-generate": 40, "small-hf-generate": 10, "small-static-cache": 25, "small-bnb-int8": 20,
               "small-bnb-nf4": 15, "small-leaks": 30, "medium-sweep": 50},
)

DRY_RUN = Profile(
    name="dry-run", device="cpu", dtype="float32",
    small=OPTSize("dry-1.3b", 2, 4, 64, 256, 64, True), medium=OPTSize("dry-6.7b", 4, 4, 128, 512, 128, True),
    large=OPTSize("dry-13b", 4, 4, 160, 640, 160, True),
    fit_method="fp32-cpu", quantized_method="int8", gpu_memory=None, context=64, fit_new_tokens=8,
    large_new_tokens=8, methods=GPU.methods, new_tokens=8, repeats=2, sweep_batches=(1, 2, 4), sweep_new_tokens=6,
    sweep_repeats=1, shard_size="20MB",  # two shards, like the hub's
    leak_cycles=5, budget_seconds=900, grace_seconds=300,
)


class Unavailable(Exception):
    """A step this machine cannot run (no GPU, no bitsandbytes): recorded with the reason, not as a failure."""


class OutOfTime(BaseException):
    """The run reached its hard time limit (a BaseException, so that no library's `except Exception` hides it)."""


# ------------------------------------------------------------------------------------------ memory readings


def proc_status() -> dict[str, int]:
    """This process's memory figures from /proc/self/status, in bytes (empty where there is no /proc)."""
    try:
        with open("/proc/self/status") as handle:
            lines = [line.split() for line in handle if line.startswith(("Vm", "Rss"))]
    except OSError:
        return {}
    return {parts[0].rstrip(":"): int(parts[1]) * 1024 for parts in lines if len(parts) >= 2 and parts[1].isdigit()}


class MemorySampler:
    """Peaks of resident memory by kind, sampled every 20 ms while the block runs: pages of memory-mapped
    weight files count in resident memory (reclaimable), anonymous memory is what the process holds."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")

    def __enter__(self) -> MemorySampler:
        self.peaks = dict.fromkeys(self.FIELDS, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            now = proc_status()
            for key in self.FIELDS:
                self.peaks[key] = max(self.peaks[key], now.get(key, 0))
            if self._stop.wait(0.02):
                return

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        self._thread.join()
        return False


# ------------------------------------------------------------------------------------------ jobs (child processes)


def job_load_ram(folder: str, method: str, gpu_memory: int | None) -> dict:
    """Load `folder` with plan `method`, as a notebook would, in this fresh process; its peak resident
    memory, whole-process (imports and the CUDA context included), is what a Colab machine must hold."""
    from .loading import load_model

    before = proc_status()
    with MemorySampler() as sampler:
        start = time.perf_counter()
        loaded = load_model(folder, plan=method, gpu_memory=gpu_memory)
        seconds = time.perf_counter() - start
    after = proc_status()
    peak = max(after.get("VmHWM", 0), after.get("VmRSS", 0), sampler.peaks["VmRSS"])  # the kernel's mark lags a little
    result = {
        "plan": loaded.info.plan.method if loaded.info.plan else None, "device": loaded.info.device,
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

    from .benchmark import check_plan

    try:
        result = check_plan(folder, method, gpu_memory=gpu_memory, prompt_tokens=context - new_tokens,
                            new_tokens=new_tokens, generation_method=generation_method, progress=_log)
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
    from .benchmark import run_suite

    suite = run_suite(OPTSize(**size), ["generate"], device=device, dtype=dtype, batches=batches,
                      new_tokens=new_tokens, repeats=repeats, progress=_log)
    suite.write(report)
    return {"report": report, "bandwidth": suite.bandwidth,
            "rows": [_speed_row(m.as_dict()) for m in suite.measurements]}


JOBS: dict[str, Callable[..., dict]] = {"load-ram": job_load_ram, "fit": job_fit, "sweep": job_sweep}


def _speed_row(m: dict) -> dict:
    keys = ("method", "batch", "prompt_tokens", "new_tokens", "tokens_per_second", "decode_tokens_per_second", "time_to_first_token",
            "peak_memory_bytes", "roofline_fraction", "bandwidth_bytes_per_second", "first_call_seconds",
            "first_call_time_to_first_token", "first_call_extra_seconds", "skipped")
    return {k: m.get(k) for k in keys}


def _run_job(job_file: Path) -> int:
    """The child's side: run one job, write {status, result | reason | error} next to its arguments."""
    spec = json.loads(job_file.read_text())
    try:
        outcome = {"status": "ok", "result": JOBS[spec["job"]](**spec["args"])}
    except Unavailable as exc:
        outcome = {"status": "unavailable", "reason": str(exc)}
    except BaseException as exc:  # recorded for the parent, whatever it is
        outcome = {"status": "failed", "error": _error(exc)}
    Path(spec["result"]).write_text(json.dumps(outcome, default=str))
    return 0 if outcome["status"] == "ok" else 1


# ------------------------------------------------------------------------------------------ the run


_LOG: Path | None = None
_STARTED = float(os.environ.get("GPU_CHECK_STARTED", time.time()))  # a child's lines count from its parent's start


def _log(line: str) -> None:
    text = f"[{time.time() - _STARTED:6.1f}s] {line}"
    print(text, file=sys.stderr, flush=True)
    if _LOG is not None:
        try:
            with open(_LOG, "a") as handle:
                handle.write(text + "\n")
        except OSError:  # the log is a copy of stderr: losing it must not end a run
            pass


def _error(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "message": str(exc)[:2000],
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]}


def _release() -> None:
    """Free what a finished step left: compiled graphs (and their CUDA graph pools), cached blocks."""
    if "torch._dynamo" in sys.modules:
        sys.modules["torch._dynamo"].reset()
    from .loading import _release_freed_memory

    _release_freed_memory()


class Run:
    """The steps of one run, their records, and the clock they share."""

    def __init__(self, profile: Profile, out: Path, scratch: Path, wheels: Path | None, budget: float,
                 only: tuple[str, ...] = ()):
        self.profile, self.out, self.scratch, self.wheels, self.only = profile, out, scratch, wheels, only
        self.budget, self.hard_limit = budget, budget + profile.grace_seconds
        self.started = time.monotonic()
        self.steps: dict[str, dict] = {}
        self.in_step = self.expired = False
        self.summary: dict = {
            "schema": SCHEMA, "profile": profile.name, "dry_run": profile.name != "gpu",
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "budget_seconds": budget, "hard_limit_seconds": self.hard_limit, "only": list(only),
            "settings": {k: v for k, v in asdict(profile).items() if k not in ("small", "medium", "large")},
            "models": {role: asdict(getattr(profile, role)) | {"parameters": getattr(profile, role).parameter_count()}
                       for role in ("small", "medium", "large")},
            "t4_budget_bytes": T4.gpu_bytes, "colab_ram_bytes": COLAB_RAM_BYTES,
            "colab_ram_used_at_start_bytes": COLAB_RAM_USED_AT_START_BYTES, "steps": self.steps,
        }

    # ---- clock

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget - self.elapsed()

    def _alarm(self, signum, frame) -> None:
        self.expired = True
        if self.in_step:
            raise OutOfTime(f"the run reached its hard limit of {self.hard_limit:.0f} s")

    def arm(self) -> None:
        if hasattr(signal, "setitimer"):
            self._previous = signal.signal(signal.SIGALRM, self._alarm)
            signal.setitimer(signal.ITIMER_REAL, max(0.001, self.hard_limit - self.elapsed()))

    def disarm(self) -> None:
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, getattr(self, "_previous", signal.SIG_DFL))

    # ---- steps

    def selected(self, key: str) -> bool:
        """Whether `--only` (prefixes of step names) leaves step `key` in; without it, every step is."""
        return not self.only or any(key.startswith(prefix) for prefix in self.only)

    def step(self, key: str, fn: Callable[[], dict], *, requires: tuple[str, ...] = (), wanted: bool | None = None,
             **info) -> dict:
        """Run `fn` as step `key` unless it is not selected (`wanted`, else `--only`), what it needs failed or
        the budget cannot hold it; record how it went."""
        record: dict = {"status": "skipped", **info}
        self.steps[key] = record
        estimate = self.profile.estimates.get(key, 0.0)
        missing = [r for r in requires if self.steps.get(r, {}).get("status") != "ok"]
        if not (self.selected(key) if wanted is None else wanted):
            record["reason"] = f"not selected (--only {','.join(self.only)})"
        elif missing:
            record["reason"] = f"needs {', '.join(missing)}, which did not succeed"
        elif self.expired or self.left() < estimate:
            record["reason"] = (f"time budget: {max(self.left(), 0):.0f} s of {self.budget:.0f} s left, "
                                f"this step needs about {estimate:.0f} s")
        else:
            _log(f"{key}: start ({self.left():.0f} s of the budget left)")
            start = time.monotonic()
            self.in_step = True
            try:
                record.update(status="ok", result=fn())
            except Unavailable as exc:
                record.update(status="unavailable", reason=str(exc))
            except (Exception, OutOfTime) as exc:  # one step's failure is recorded; the run goes on
                record.update(status="failed", error=_error(exc))
            finally:
                self.in_step = False
                record["seconds"] = time.monotonic() - start
                try:
                    _release()
                except Exception as exc:  # freeing memory must not end the run
                    record["release_error"] = _error(exc)
                record["cuda_allocated_after_bytes"] = _cuda_allocated()
        _log(f"{key}: {record['status']} {record.get('reason') or (record.get('error') or {}).get('message', '')}"[:400])
        self.write()
        return record

    def child(self, job: str, **args) -> dict:
        """Run a job in a fresh Python process (its own CUDA context and compile caches, as a fresh kernel);
        its result, or its reason or error raised here."""
        folder = Path(tempfile.mkdtemp(prefix=f"job-{job}-", dir=self.scratch))
        spec = {"job": job, "args": args, "result": str(folder / "result.json")}
        (folder / "job.json").write_text(json.dumps(spec))
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(folder / "inductor"))
        command = [sys.executable, "-m", "helpers.gpu_check", "--job", str(folder / "job.json")]
        if _LOG is not None:
            command += ["--log", str(_LOG)]
        try:
            done = subprocess.run(command, cwd=REPO, env=env, timeout=max(1.0, self.hard_limit - self.elapsed()))
        except subprocess.TimeoutExpired:
            raise OutOfTime(f"the {job} job ran past the run's hard limit and was stopped") from None
        result = folder / "result.json"
        if not result.is_file():
            raise RuntimeError(f"the {job} job ended with exit code {done.returncode} and no result "
                               f"(killed, out of memory, or a crash: see the log)")
        outcome = json.loads(result.read_text())
        shutil.rmtree(folder, ignore_errors=True)
        if outcome["status"] == "unavailable":
            raise Unavailable(outcome["reason"])
        if outcome["status"] == "failed":
            error = outcome["error"]
            raise ChildFailed(f"{error['type']}: {error['message']}\n{error['traceback']}")
        return outcome["result"]

    def write(self) -> None:
        self.summary["wall_seconds"] = self.elapsed()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu-check.json").write_text(json.dumps(self.summary, indent=2, default=str) + "\n")


class ChildFailed(RuntimeError):
    """A job in a child process raised; its type, message and traceback are in the message."""


def _cuda_allocated() -> int | None:
    if "torch" not in sys.modules or not sys.modules["torch"].cuda.is_available():
        return None
    return sys.modules["torch"].cuda.memory_allocated()


# ------------------------------------------------------------------------------------------ the steps


class Check:
    """The steps of `make gpu-check`, in the order a Colab user's questions rank: fits first, then speed."""

    def __init__(self, run: Run):
        self.run, self.p = run, run.profile
        self.folders: dict[str, Path] = {}
        self.small_reports: list = []

    @property
    def torch_dtype(self):
        from .models import resolve_dtype

        return resolve_dtype(self.p.dtype, self.p.device)

    def _write_folder(self, size: OPTSize, role: str) -> dict:
        from .fixtures import save_random_model

        folder = self.run.scratch / size.name
        need = weight_bytes(size, self.p.dtype) * 1.05
        free = shutil.disk_usage(self.run.scratch).free
        if free < need:
            raise RuntimeError(f"{free / 1e9:.1f} GB of disk free in {self.run.scratch}, {size.name} needs "
                               f"{need / 1e9:.1f} GB: pass --scratch on a larger disk")
        save_random_model(size, folder, dtype=self.torch_dtype, device=self.p.device, max_shard_size=self.p.shard_size)
        self.folders[role] = folder
        files = [{"name": f.name, "bytes": f.stat().st_size} for f in sorted(folder.iterdir())]
        return {"folder": str(folder), "files": files,
                "weight_file_bytes": sum(f["bytes"] for f in files if f["name"].endswith(".safetensors"))}

    def _remove(self, role: str) -> None:
        folder = self.folders.pop(role, None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _option(self, size: OPTSize, method: str, context: int, batch: int = 1):
        """The planner's option for `method` under the run's budget: the prediction a check is measured
        against (a plan this machine cannot use is `Unavailable`, with the planner's reason)."""
        from .errors import ModelLoadError
        from .planner import Budget, choose, plan

        budget = Budget.of_machine(gpu_bytes=self.p.gpu_memory)
        try:
            return choose(plan(size, budget, context=context, batch=batch), method, model=size.name, budget=budget)
        except ModelLoadError as exc:
            raise Unavailable(str(exc)) from None

    def _predicted(self, size: OPTSize, method: str, context: int, batch: int = 1) -> dict:
        """The planner's peak for `method` and whether it fits the run's budget, fitting or not."""
        from .planner import Budget, plan

        option = next((o for o in plan(size, Budget.of_machine(gpu_bytes=self.p.gpu_memory), context=context,
                                       batch=batch) if o.method == method), None)
        if option is None:
            return {"planner_peak_bytes": None, "planner_fits": None}
        return {"planner_peak_bytes": option.gpu_bytes_each[0] if option.gpu_bytes_each else option.cpu_bytes,
                "planner_fits": option.fits}

    # ---- the medium model: fp16 under a T4's budget, loading RAM, the batch sweep

    def load_ram(self) -> dict:
        result = self.run.child("load-ram", folder=str(self.folders["medium"]), method=self.p.fit_method,
                                gpu_memory=self.p.gpu_memory)
        peak = result["peak_resident_bytes"]
        predicted = result["predicted_ram_bytes"]
        result.update(
            colab_ram_bytes=COLAB_RAM_BYTES, fits_colab_ram=peak < COLAB_RAM_BYTES,
            colab_headroom_bytes=COLAB_RAM_BYTES - COLAB_RAM_USED_AT_START_BYTES - peak,
            relative_error=(predicted - peak) / peak if predicted and peak else None,
        )
        return result

    def fit(self, role: str, method: str, new_tokens: int, contexts: tuple[int, ...]) -> dict:
        """`plan --check` under the budget: the first context on generate()'s default path; if that runs
        out of memory, the eager cached loop at the same context (on a GPU, where the default compiles),
        then the shorter contexts, until one fits."""
        size = getattr(self.p, role)
        option = self._option(size, method, contexts[0])
        attempts = [(contexts[0], "auto")]
        if self.p.device == "cuda" and method == self.p.fit_method:  # where auto means compiling
            attempts.append((contexts[0], "cached"))
        attempts += [(c, "auto") for c in contexts[1:]]
        results = []
        for context, generation in attempts:
            outcome = self.run.child("fit", folder=str(self.folders[role]), method=method, gpu_memory=self.p.gpu_memory,
                                     context=context, new_tokens=min(new_tokens, context - 1),
                                     generation_method=generation)
            outcome.update(self._predicted(size, method, context))
            results.append(outcome)
            if outcome["fits"]:
                break
        first = results[0]
        return {"model": size.name, "method": method, "budget_bytes": self.p.gpu_memory, "option": option.as_dict(),
                "fits": first["fits"], "attempts": results,
                "fits_with": next(({"context": r["context"], "generation_method": r["generation_method"]}
                                   for r in results if r["fits"]), None)}

    def large_fit(self) -> dict:
        self._option(self.p.large, self.p.quantized_method, self.p.context)  # unavailable here: before writing 26 GB
        try:
            written = self._write_folder(self.p.large, "large")
            result = self.fit("large", self.p.quantized_method, self.p.large_new_tokens,
                              (self.p.context, self.p.context // 2))
        finally:
            self._remove("large")
        result["folder"] = written
        return result

    def sweep(self) -> dict:
        from .planner import CUDA_CONTEXT_BYTES

        p = self.p
        report = self.run.out / f"gpu-{p.medium.name}.json"
        result = self.run.child("sweep", size=asdict(p.medium), device=p.device, dtype=p.dtype,
                                batches=list(p.sweep_batches), new_tokens=p.sweep_new_tokens, repeats=p.sweep_repeats,
                                report=str(report))
        for row in result["rows"]:
            if row["skipped"]:
                continue
            row.update(self._predicted(p.medium, p.fit_method, row["prompt_tokens"] + row["new_tokens"], row["batch"]))
            if p.device == "cuda":  # measured on the whole card; a T4 holds the batch if the peak fits its budget
                row["fits_t4"] = row["peak_memory_bytes"] + CUDA_CONTEXT_BYTES <= T4.gpu_bytes
        return result

    # ---- the small model: every decoding method, then load/unload cycles

    def method(self, name: str) -> dict:
        from .benchmark import run_suite

        try:
            report = run_suite(str(self.folders["small"]), [name], device=self.p.device, dtype=self.p.dtype,
                               new_tokens=self.p.new_tokens, repeats=self.p.repeats, progress=_log)
        except ImportError as exc:  # transformers' words for a missing bitsandbytes
            raise Unavailable(f"{type(exc).__name__}: {exc}") from None
        report.model = f"{self.p.small.name} (random weights)"
        self.small_reports.append(report)
        measurement = report.measurements[0]
        if measurement.skipped:
            raise Unavailable(measurement.skipped)
        return {"measurement": measurement.as_dict(), "bandwidth": report.bandwidth}

    def leaks(self) -> dict:
        from .benchmark import leak_check

        before = _cuda_allocated()
        result = leak_check(str(self.folders["small"]), self.p.leak_cycles, device=self.p.device, progress=_log)
        after = result["cuda_allocated_bytes_after_each"]
        result.update(cuda_allocated_before_bytes=before,
                      cuda_left_after_last_bytes=after[-1] - (before or 0) if after else None)
        return result

    # ---- the order

    def all(self) -> None:
        """Fits under the T4 budget first, then the small model's methods and cycles, then the sweep: the
        order in which they answer a Colab user, so a run cut short by its budget loses the least."""
        run, p = self.run, self.p
        run.step("medium-folder", lambda: self._write_folder(p.medium, "medium"), model=p.medium.name,
                 wanted=run.selected("medium-load-ram") or run.selected("medium-fit"))
        need = ("medium-folder",)
        run.step("medium-load-ram", self.load_ram, requires=need, model=p.medium.name)
        run.step("medium-fit", lambda: self.fit("medium", p.fit_method, p.fit_new_tokens, (p.context,)),
                 requires=need, model=p.medium.name)
        self._remove("medium")  # the disk holds one large checkpoint at a time
        run.step("large-fit", self.large_fit, model=p.large.name)
        run.step("small-folder", lambda: self._write_folder(p.small, "small"), model=p.small.name,
                 wanted=any(run.selected(f"small-{name}") for name in (*p.methods, "leaks")))
        for name in p.methods:
            run.step(f"small-{name}", lambda name=name: self.method(name), requires=("small-folder",),
                     model=p.small.name, method=name)
        run.step("small-leaks", self.leaks, requires=("small-folder",), model=p.small.name)
        self._remove("small")
        run.step("medium-sweep", self.sweep, model=p.medium.name)


# ------------------------------------------------------------------------------------------ results


def token_agreement(steps: dict, methods: tuple[str, ...], reference: str = "hf-generate") -> None:
    """Each method's greedy tokens against plain `model.generate`'s in the unquantized dtype: the share of
    positions that agree, and the first that does not."""
    ref = steps.get(f"small-{reference}", {})
    if ref.get("status") != "ok":
        return
    expected = ref["result"]["measurement"]["token_ids"]
    for name in methods:
        record = steps.get(f"small-{name}", {})
        if record.get("status") != "ok":
            continue
        got = record["result"]["measurement"]["token_ids"]
        same = [a == b for a, b in zip(got, expected)]
        record["result"]["token_agreement"] = {
            "reference": reference, "agreement": sum(same) / len(expected) if expected else None,
            "first_difference": same.index(False) if False in same else None, "identical": got == expected}


def write_results(run: Run, check: Check) -> None:
    """The small model's report (bench schema) and figures beside the summary; a figure that cannot be
    made is recorded, not fatal."""
    from .benchmark import Report

    p, figures = run.profile, {}
    token_agreement(run.steps, p.methods)
    reports = check.small_reports
    if reports:
        first = reports[0]
        merged = Report(model=first.model, parameters=first.parameters, dtype=first.dtype, device=first.device,
                        facts=first.facts, bandwidth=first.bandwidth,
                        settings=dict(first.settings, methods=[m.method for r in reports for m in r.measurements]),
                        measurements=[m for r in reports for m in r.measurements])
        merged.write(run.out / f"gpu-{p.small.name}.json")
    swept = run.steps.get("medium-sweep", {}).get("status") == "ok"  # not a report an earlier run left there
    for name, make in (("small", lambda: _bench_figure(run.out / f"gpu-{p.small.name}.json") if reports else "-"),
                       ("medium", lambda: _bench_figure(run.out / f"gpu-{p.medium.name}.json") if swept else "-"),
                       ("fits", lambda: _fits_figure(run))):
        try:
            figures[name] = make()
        except Exception as exc:  # a figure is a view of the JSON, which is written whatever happens here
            figures[name] = {"error": _error(exc)}
    run.summary["figures"] = figures
    run.write()


def _bench_figure(report: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from .plots import benchmark_figure

    if not report.is_file():
        return "not made: no measurements"
    data = json.loads(report.read_text())
    if not any(not r.get("skipped") for r in data["results"]):
        return "not made: nothing ran"
    path = report.with_suffix(".png")
    benchmark_figure(data).savefig(path, dpi=110, bbox_inches="tight")
    return str(path.name)


def _fits_figure(run: Run) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from .plots import gpu_check_figure

    path = run.out / "gpu-check-fits.png"
    gpu_check_figure(run.summary).savefig(path, dpi=110, bbox_inches="tight")
    return path.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny shapes")
    parser.add_argument("--out", default="benchmarks", help="where gpu-*.json and figures go (default benchmarks)")
    parser.add_argument("--wheels", default=".gpu-wheels", help="carried wheels to install offline if missing")
    parser.add_argument("--scratch", help="folder for the random-weight checkpoints (default: a temporary one)")
    parser.add_argument("--budget", type=float, help="seconds the steps may take (default: the profile's)")
    parser.add_argument("--only", default="", metavar="STEP[,STEP...]",
                        help="run only the steps whose names start so (medium-fit, large-fit, small-, medium-sweep ...)")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global _LOG
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only: nothing to fetch, and no network there
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GPU_CHECK_STARTED", str(_STARTED))
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if args.job:
        _LOG = Path(args.log) if args.log else None
        return _run_job(Path(args.job))

    try:
        return _check(args)
    finally:
        _LOG = None


def _check(args: argparse.Namespace) -> int:
    global _LOG
    profile = DRY_RUN if args.dry_run else GPU
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _LOG = out / "gpu-check.log"
    _LOG.write_text("")
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=args.scratch) as scratch:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(scratch) / "inductor")  # cold, as on a fresh machine
        run = Run(profile, out, Path(scratch), Path(args.wheels) if args.wheels else None,
                  profile.budget_seconds if args.budget is None else args.budget,
                  tuple(o.strip() for o in args.only.split(",") if o.strip()))
        _log(f"gpu-check ({profile.name}): budget {run.budget:.0f} s, hard limit {run.hard_limit:.0f} s, out {out}")
        run.summary["packages"] = preflight(run.wheels, Path(scratch))
        from .benchmark import hardware_facts

        run.summary["hardware"] = hardware_facts()
        cuda = run.summary["packages"]["cuda"]["available"]
        if profile.device == "cuda" and not cuda:
            run.summary["error"] = "torch sees no CUDA GPU here: run with --dry-run, or on a GPU machine"
            run.write()
            _log(run.summary["error"])
            return 1
        check = Check(run)
        run.arm()
        try:
            check.all()
        finally:
            run.disarm()
            for role in list(check.folders):
                check._remove(role)
            write_results(run, check)
    counts = {s: sum(r["status"] == s for r in run.steps.values()) for s in STATUSES}
    _log(f"done in {run.elapsed():.0f} s: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
