"""`make gpu-check`: one prepared measuring run on one GPU (`--dry-run`: the same steps on the CPU, tiny)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from tools.preflight import preflight

from . import run as log
from .jobs import run_job
from .profile import DRY_RUN, GPU, STATUSES
from .results import write_results
from .run import STARTED, Run, log_line
from .steps import Check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.splitlines()[0])
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
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only: nothing to fetch, and no network there
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GPU_CHECK_STARTED", str(STARTED))
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if args.job:
        log.LOG = Path(args.log) if args.log else None
        return run_job(Path(args.job))

    try:
        return _check(args)
    finally:
        log.LOG = None


def _check(args: argparse.Namespace) -> int:
    profile = DRY_RUN if args.dry_run else GPU
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log.LOG = out / "gpu-check.log"
    log.LOG.write_text("")
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=args.scratch) as scratch:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(scratch) / "inductor")  # cold, as on a fresh machine
        run = Run(profile, out, Path(scratch), Path(args.wheels) if args.wheels else None,
                  profile.budget_seconds if args.budget is None else args.budget,
                  tuple(o.strip() for o in args.only.split(",") if o.strip()))
        log_line(f"gpu-check ({profile.name}): budget {run.budget:.0f} s, hard limit {run.hard_limit:.0f} s, out {out}")
        run.summary["packages"] = preflight(run.wheels, Path(scratch))
        from helpers.analysis.benchmark import hardware_facts

        run.summary["hardware"] = hardware_facts()
        cuda = run.summary["packages"]["cuda"]["available"]
        if profile.device == "cuda" and not cuda:
            run.summary["error"] = "torch sees no CUDA GPU here: run with --dry-run, or on a GPU machine"
            run.write()
            log_line(run.summary["error"])
            return 1
        check = Check(run)
        run.arm()
        try:
            check.all()
        finally:
            run.disarm()
            check.remove_folders()
            write_results(run, check)
    counts = {s: sum(r["status"] == s for r in run.steps.values()) for s in STATUSES}
    log_line(f"done in {run.elapsed():.0f} s: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
