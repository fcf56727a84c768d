"""One LoRA training step's peak memory on the CPU, in a fresh process: peft's `get_peft_model` on a random OPT,
transformers' gradient checkpointing, torch's AdamW, two steps (the second reuses the first's freed heap).
Run as `python tests/training_step.py LAYERS HEADS D_MODEL FFN SEQ_LEN BATCH RANK CHECKPOINTING`: prints JSON."""

from __future__ import annotations

import gc
import json
import sys
import warnings

import torch
from peft import LoraConfig, get_peft_model

from helpers.memory.measure import PeakMemory, release_freed_memory
from helpers.opt.random_weights import random_model
from helpers.opt.sizes import OPTSize


def train(size: OPTSize, seq_len: int, batch: int, rank: int, checkpointing: bool, steps: int = 2) -> float:
    model = random_model(size, dtype=torch.float32)
    if checkpointing:
        with warnings.catch_warnings():  # transformers 5.24 renames it; Colab's 5.15 has only this name
            warnings.simplefilter("ignore", FutureWarning)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                                             lora_dropout=0.05, task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, size.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.item()


def main(argv: list[str]) -> None:
    layers, heads, d_model, ffn, seq_len, batch, rank, checkpointing = map(int, argv)
    warm = OPTSize("warm-up", 2, 4, 64, 256, 64, True)  # imports, kernels and peft's first-use caches
    for flag in (True, False):
        train(warm, 16, 1, 4, flag)
    gc.collect()
    release_freed_memory()
    size = OPTSize("measured", layers, heads, d_model, ffn, d_model, True)
    with PeakMemory("cpu") as peak:
        loss = train(size, seq_len, batch, rank, bool(checkpointing))
    print(json.dumps({"measured_bytes": peak.added, "loss": loss}))


if __name__ == "__main__":
    main(sys.argv[1:])
