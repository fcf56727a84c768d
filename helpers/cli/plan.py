"""`python -m helpers plan` (and `--check`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import HelpersError
from ..files import write_atomically
from .common import EXIT_ERROR, UsageError, check_outputs, memory_flags, print_json, quiet_libraries

# ---------------------------------------------------------------------------------------------- plan

def add_plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="list the ways to fit a model in memory, best first",
        description="List every way to load an OPT model on a memory budget (fp16/bf16, 8-bit, 4-bit, CPU or disk "
                    "offload, several GPUs) with its predicted peak GPU and CPU memory and expected speed, best "
                    "first. Budgets default to this machine's.",
    )
    p.add_argument("--model", metavar="NAME_OR_PATH",
                   help="a size (opt-13b) or a model folder (needed, except with --train: then the largest size per plan)")
    p.add_argument("--gpu-memory", metavar="SIZE", help="memory per GPU, e.g. 15GiB (default: this machine's)")
    p.add_argument("--gpus", type=int, metavar="N", help="number of GPUs (default: this machine's, or 1 with --gpu-memory)")
    p.add_argument("--cpu-memory", metavar="SIZE", help="RAM, e.g. 12GiB (default: what is available here)")
    p.add_argument("--context", type=int, default=2048, metavar="TOKENS", help="tokens per sequence to plan for")
    p.add_argument("--batch", type=int, metavar="B", help="sequences at once (default 1; with --train 4)")
    p.add_argument("--train", action="store_true",
                   help="plan LoRA/QLoRA fine-tuning instead: each training plan's peak memory (gradient checkpointing)")
    p.add_argument("--seq-len", type=int, default=512, metavar="L", help="with --train: tokens per training block")
    p.add_argument("--rank", type=int, default=16, metavar="R", help="with --train: LoRA's rank")
    p.add_argument("--json", action="store_true", help="print the ranked options as JSON")
    p.add_argument("--check", action="store_true",
                   help="load the best (or --plan) option with random weights under the budget, generate "
                        "--new-tokens tokens, and compare the predicted peak memory with the measured one")
    p.add_argument("--plan", default="auto", metavar="NAME", help="with --check: the plan to check (default: the best)")
    # its old name: a plan is not a decoding method (a backend), so --method is deprecated, still taken, not listed
    p.add_argument("--method", dest="old_method", metavar="M", help=argparse.SUPPRESS)
    p.add_argument("--new-tokens", type=int, default=256, metavar="N", help="with --check: tokens to generate")
    p.add_argument("--out", metavar="FILE", help="with --check: write the result as JSON to FILE")
    p.set_defaults(run=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    from ..memory.planner import Budget, plan
    from ..units import human_bytes

    gpu, cpu = memory_flags(args)
    checked_plan = _plan_flag(args)
    gpus = args.gpus if args.gpus is not None else (1 if gpu and not _gpu_count() else None)
    try:
        budget = Budget.of_machine(gpu_bytes=gpu, gpus=gpus, cpu_bytes=cpu)
    except ValueError as exc:
        raise UsageError(f"--gpus: {exc}") from None
    if args.train:
        from .plan_training import run_plan_training

        return run_plan_training(args, budget)
    if args.model is None:
        raise UsageError("plan needs --model NAME_OR_PATH (or --train, for the largest size each training plan fits)")
    args.batch = 1 if args.batch is None else args.batch
    if args.check:
        check_outputs((args.out, "--out", False))
        quiet_libraries()
        from .project_tools import project_tool

        check_plan = project_tool("plan_check", "plan --check").check_plan
        result = check_plan(args.model, checked_plan, gpu_memory=args.gpu_memory, cpu_memory=args.cpu_memory,
                            new_tokens=args.new_tokens, progress=lambda line: print(line, file=sys.stderr, flush=True))
        print(f"{result['model']} with plan {result['plan']}: predicted {human_bytes(result['predicted_bytes'])}, "
              f"measured {human_bytes(result['measured_bytes'])} ({result['measured_on']}), error "
              f"{result['relative_error']:+.1%}; {result['new_tokens']} tokens at {result['tokens_per_second']:.1f} tok/s")
        if args.out:
            write_atomically(args.out, json.dumps(result, indent=2) + "\n")
        return 0
    from ..loading.sources import size_of

    size = size_of(args.model)
    try:
        options = plan(size, budget, context=args.context, batch=args.batch)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    usable = [o for o in options if o.usable]
    if args.json:
        print_json({"model": size.name, "budget": {"gpu_bytes": budget.gpu_bytes, "gpus": budget.gpus,
                                                    "cpu_bytes": budget.cpu_bytes},
                     "context": args.context, "batch": args.batch, "options": [o.as_dict() for o in options]})
    else:
        from ..analysis.tables import text_table

        print(f"{size.name} on {budget.describe()}, context {args.context}, batch {args.batch}:")
        print(text_table([o.row() for o in options]))
        if usable:
            best = usable[0]
            source = args.model if size.on_hub or Path(args.model).is_dir() else f"./{size.name}"  # Meta's files, converted
            print(f"\nBest: {best.plan} ({best.description}). In Python: load_model({source!r}, plan={best.plan!r})")
            if not size.on_hub and not Path(args.model).is_dir():
                print(f"{size.name} is not on the Hub: convert Meta's files first (docs/opt-175b.md).")
            if best.plan.endswith("multi-gpu") or not size.on_hub:  # accelerate's split keeps one GPU busy at a time
                print(f"To use every GPU at once (tensor parallel), or several nodes: `python -m helpers serve {source} "
                      "--gpus N [--nodes M] --dry-run` plans vLLM's layout (docs/serving.md).")
            for o in options:
                if o.fits and not o.available:
                    print(f"({o.plan} would fit but {o.unavailable_reason}.)")
    if not usable:
        from ..memory.planner import choose

        try:
            choose(options, model=size.name, budget=budget)
        except HelpersError as exc:
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _plan_flag(args: argparse.Namespace) -> str:
    """--plan, or its deprecated old spelling --method."""
    if args.old_method is None:
        return args.plan
    print("note: plan --method is deprecated; it is called --plan now", file=sys.stderr)
    if args.plan not in ("auto", args.old_method):
        raise UsageError(f"--method {args.old_method} and --plan {args.plan} name two plans; give --plan only")
    return args.old_method


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
