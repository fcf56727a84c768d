"""The training benchmark: LoRA training tokens/s and peak memory per plan and shape, as JSON in benchmarks/."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from helpers.analysis.benchmark import hardware_facts
from helpers.files import write_atomically
from helpers.finetune import finetune
from helpers.finetune.data import TrainingData
from helpers.finetune.lora import PLANS
from helpers.opt.random_weights import save_random_model
from helpers.opt.sizes import OPTSize, get_size

SCHEMA = "opt-notebooks/bench-train/v1"
TINY = OPTSize("tiny", layers=2, heads=4, d_model=64, ffn=256, word_embed_proj_dim=64, pre_layer_norm=True,
               on_hub=False)  # the tests' tiny pre-LN shape, with OPT's whole vocabulary
SHAPES = {"tiny": TINY, "opt-125m": get_size("opt-125m")}



def random_blocks(seq_len: int, batch_size: int, steps: int, seed: int = 0) -> TrainingData:
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.randint(3, 50000, (batch_size * steps + batch_size, seq_len), generator=generator)
    return TrainingData(train=blocks[batch_size:], held_out=blocks[:batch_size], seq_len=seq_len,
                        tokens=blocks.numel(), documents=1, source="random token ids")


def plans_here() -> list[str]:
    return [name for name, plan in PLANS.items() if plan.device == "cpu" or torch.cuda.is_available()]


def bench_train(shapes: list[str], plans: list[str], *, steps: int, seq_len: int, batch_size: int, rank: int,
                progress=print) -> dict:
    """Train `steps` steps of a rank-`rank` LoRA on random weights of each shape with each plan."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for shape in shapes:
            folder = save_random_model(SHAPES[shape], Path(tmp) / shape, dtype=torch.float32)
            for plan in plans:
                out = Path(tmp) / f"{shape}-{plan}"
                result = finetune(str(folder), random_blocks(seq_len, batch_size, steps), out, plan=plan,
                                  steps=steps, seq_len=seq_len, batch_size=batch_size, rank=rank, lr=1e-4)
                rows.append({"shape": shape, "plan": plan, "tokens_per_second": result.tokens_per_second,
                             "peak_memory_bytes": result.peak_memory_bytes, "train_tokens": result.train_tokens,
                             "trainable_parameters": result.trainable_parameters, "steps": result.steps})
                progress(f"{shape} {plan}: {result.tokens_per_second:.0f} tokens/s, peak "
                         f"{result.peak_memory_bytes / 2**20:.0f} MiB")
    return {"schema": SCHEMA, "hardware": hardware_facts(), "torch_threads": torch.get_num_threads(),
            "settings": {"steps": steps, "seq_len": seq_len, "batch_size": batch_size, "rank": rank,
                         "weights": "random, fp32 on disk"}, "results": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_train", description=__doc__)
    parser.add_argument("--shapes", default="tiny,opt-125m", help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--plans", default=None, help="comma-separated (default: every plan this machine runs)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch's threads (default: torch's own; 1 on a busy machine, "
                        "where threads spin against each other)")
    parser.add_argument("--out", default="benchmarks/cpu-train.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = bench_train(args.shapes.split(","), args.plans.split(",") if args.plans else plans_here(),
                         steps=args.steps, seq_len=args.seq_len, batch_size=args.batch_size, rank=args.rank,
                         progress=lambda line: print(line, file=sys.stderr, flush=True))
    write_atomically(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
