"""`python -m helpers plan --train`: the training plans for a model, or the largest size each plan fits."""

from __future__ import annotations

import argparse
import sys

from ..errors import HelpersError
from .common import EXIT_ERROR, UsageError, print_json


def run_plan_training(args: argparse.Namespace, budget) -> int:
    from ..memory.training_plan import choose_training, plan_training
    from ..units import human_bytes

    batch = 4 if args.batch is None else args.batch
    settings = {"seq_len": args.seq_len, "batch_size": batch, "rank": args.rank}
    head = {"budget": {"gpu_bytes": budget.gpu_bytes, "gpus": budget.gpus, "cpu_bytes": budget.cpu_bytes},
            "train": True, "batch": settings["batch_size"], **settings, "gradient_checkpointing": True}
    if args.model is None:
        return _largest(args, budget, settings, head)
    from ..loading.sources import size_of

    size = size_of(args.model)
    try:
        options = plan_training(size, budget, **settings)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print_json({"model": size.name, **head, "options": [o.as_dict() for o in options]})
    else:
        from ..analysis.tables import text_table

        print(f"Training {size.name} with LoRA (rank {args.rank}) on {budget.describe()}, blocks of {args.seq_len} "
              f"tokens, batch {batch}, gradient checkpointing:")
        print(text_table([o.row() for o in options]))
    try:
        best = choose_training(options, model=size.name)
    except HelpersError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not args.json:
        print(f"\nBest: {best.plan} ({best.description}), peak {human_bytes(best.peak_bytes)}. "
              f"`python -m helpers finetune {args.model} DATA --out DIR --plan {best.plan}` trains with it.")
    return 0


def _largest(args: argparse.Namespace, budget, settings: dict, head: dict) -> int:
    from ..memory.training_plan import TRAINING_PLANS, largest_trainable
    from ..units import human_bytes

    rows = []
    for name in TRAINING_PLANS:
        try:
            option = largest_trainable(budget, plan_name=name, **settings)
        except HelpersError:
            option = None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        rows.append({"plan": name, "largest": option.size if option else "-",
                     "peak": human_bytes(option.peak_bytes) if option else "-",
                     "option": option.as_dict() if option else None})
    if args.json:
        print_json({**head, "largest": [{"plan": r["plan"], "option": r["option"]} for r in rows]})
    else:
        from ..analysis.tables import text_table

        print(f"The largest OPT size each training plan fits on {budget.describe()} (LoRA rank {args.rank}, blocks "
              f"of {args.seq_len} tokens, batch {settings['batch_size']}, gradient checkpointing):")
        print(text_table([{k: v for k, v in r.items() if k != "option"} for r in rows]))
    return 0 if any(r["option"] for r in rows) else EXIT_ERROR
