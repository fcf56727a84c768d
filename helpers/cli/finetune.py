"""`python -m helpers finetune`: train a LoRA adapter on your text."""

from __future__ import annotations

import argparse
import sys

from ..finetune.lora import PLAN_CHOICES
from .common import EXIT_INTERRUPTED, print_json, quiet_libraries


def add_finetune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="train a LoRA adapter for an OPT model on your text",
        description="Fine-tune an OPT model on your text with LoRA (peft on transformers' Trainer): DATA is a .txt or "
                    ".jsonl file, a folder of them, or a hub data set id. The adapter is saved in DIR (peft's format), "
                    "checkpoints in DIR/checkpoints; Ctrl-C stops after the step under way and saves what was "
                    "trained (a second Ctrl-C stops at once); --resume goes on from the last checkpoint.",
    )
    p.add_argument("model", metavar="MODEL", help="an OPT size (opt-125m), a hub id or a model folder")
    p.add_argument("data", metavar="DATA", help="a .txt/.md or .jsonl file, a folder of them, or a hub data set id")
    p.add_argument("--out", required=True, metavar="DIR", help="the adapter's folder (new or empty; with --resume, "
                   "an earlier run's)")
    p.add_argument("--plan", default="auto", choices=PLAN_CHOICES,
                   help="how the base model is held: fp16, 8-bit or 4-bit (QLoRA) on a GPU, fp32 on the CPU; auto: "
                        "the planner's choice")
    p.add_argument("--steps", type=int, default=200, metavar="N", help="optimizer steps (default 200)")
    p.add_argument("--seq-len", type=int, default=512, metavar="L", help="tokens per training block (default 512)")
    p.add_argument("--batch-size", type=int, default=4, metavar="B", help="blocks per step (default 4)")
    p.add_argument("--lr", type=float, default=2e-4, metavar="LR", help="learning rate, above 0 and at most 1e-2 "
                   "(default 2e-4)")
    p.add_argument("--rank", type=int, default=16, metavar="R", help="LoRA rank, 1 to 256 (default 16)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed for the adapter, the data order and dropout")
    p.add_argument("--resume", action="store_true", help="go on from the last checkpoint in DIR/checkpoints")
    p.add_argument("--merge", action="store_true", help="also write the model with the adapter merged in to DIR/merged")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    quiet_libraries()
    from ..finetune.training import finetune

    every, evaluated = max(1, args.steps // 20), set()

    def progress(p) -> None:
        if p.held_out_loss is not None and p.step and p.step not in evaluated:  # the final evaluation repeats the last
            evaluated.add(p.step)
            print(f"step {p.step}/{p.total_steps}: held-out loss {p.held_out_loss:.3f}", file=sys.stderr, flush=True)
        elif p.loss is not None and (p.step % every == 0 or p.step == p.total_steps):
            print(f"step {p.step}/{p.total_steps}: loss {p.loss:.3f}, {p.tokens_per_second:.0f} tokens/s",
                  file=sys.stderr, flush=True)

    result = finetune(args.model, args.data, args.out, plan=args.plan, steps=args.steps, seq_len=args.seq_len,
                      lr=args.lr, rank=args.rank, batch_size=args.batch_size, seed=args.seed, resume=args.resume,
                      merge=args.merge, on_progress=progress)
    if args.json:
        print_json(result.as_dict())
    else:
        print(result.summary())
    if result.interrupted:
        print(f"interrupted: the adapter so far is in {result.adapter_dir}; go on with the same command and --resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
