"""One check run: its log, its time budget, its child processes and what they return."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from helpers.files import write_atomically
from tools.preflight import REPO

from .profile import COLAB_RAM_BYTES, COLAB_RAM_USED_AT_START_BYTES, SCHEMA, T4, OutOfTime, Profile, Unavailable

# ------------------------------------------------------------------------------------------ the run


LOG: Path | None = None
STARTED = float(os.environ.get("GPU_CHECK_STARTED", time.time()))  # a child's lines count from its parent's start


def log_line(line: str) -> None:
    text = f"[{time.time() - STARTED:6.1f}s] {line}"
    print(text, file=sys.stderr, flush=True)
    if LOG is not None:
        try:
            with open(LOG, "a") as handle:
                handle.write(text + "\n")
        except OSError:  # the log is a copy of stderr: losing it must not end a run
            pass


def error_record(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "message": str(exc)[:2000],
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]}


def _release() -> None:
    """Free what a finished step left: compiled graphs (and their CUDA graph pools), cached blocks."""
    if "torch._dynamo" in sys.modules:
        sys.modules["torch._dynamo"].reset()
    from helpers.memory.measure import release_freed_memory

    release_freed_memory()


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
            log_line(f"{key}: start ({self.left():.0f} s of the budget left)")
            start = time.monotonic()
            self.in_step = True
            try:
                record.update(status="ok", result=fn())
            except Unavailable as exc:
                record.update(status="unavailable", reason=str(exc))
            except (Exception, OutOfTime) as exc:  # one step's failure is recorded; the run goes on
                record.update(status="failed", error=error_record(exc))
            finally:
                self.in_step = False
                record["seconds"] = time.monotonic() - start
                try:
                    _release()
                except Exception as exc:  # freeing memory must not end the run
                    record["release_error"] = error_record(exc)
                record["cuda_allocated_after_bytes"] = cuda_allocated()
        log_line(f"{key}: {record['status']} {record.get('reason') or (record.get('error') or {}).get('message', '')}"[:400])
        self.write()
        return record

    def child(self, job: str, **args) -> dict:
        """Run a job in a fresh Python process (its own CUDA context and compile caches, as a fresh kernel);
        its result, or its reason or error raised here."""
        folder = Path(tempfile.mkdtemp(prefix=f"job-{job}-", dir=self.scratch))
        spec = {"job": job, "args": args, "result": str(folder / "result.json")}
        (folder / "job.json").write_text(json.dumps(spec))
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(folder / "inductor"))
        command = [sys.executable, "-m", "tools.gpu_check", "--job", str(folder / "job.json")]
        if LOG is not None:
            command += ["--log", str(LOG)]
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
        write_atomically(self.out / "gpu-check.json", json.dumps(self.summary, indent=2, default=str) + "\n")


class ChildFailed(RuntimeError):
    """A job in a child process raised; its type, message and traceback are in the message."""


def cuda_allocated() -> int | None:
    if "torch" not in sys.modules or not sys.modules["torch"].cuda.is_available():
        return None
    return sys.modules["torch"].cuda.memory_allocated()
