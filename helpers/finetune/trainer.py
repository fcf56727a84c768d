"""transformers' `Trainer` set up for a LoRA run: the packed blocks as a data set, the arguments per device."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from ..errors import SettingsError
from .callbacks import TrainingMonitor
from .output import MARK


class Blocks(torch.utils.data.Dataset):
    """Packed blocks of token ids as a causal-LM data set: the labels are the inputs (the model shifts them)."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        block = self.blocks[index]
        return {"input_ids": block, "labels": block}


def optimizer_name(device: torch.device) -> str:
    """bitsandbytes' paged 8-bit AdamW on a CUDA GPU where it is installed (its state takes a quarter of the
    memory, and pages out under pressure instead of failing); torch's AdamW elsewhere."""
    if device.type == "cuda":
        try:
            import bitsandbytes  # noqa: F401

            return "paged_adamw_8bit"
        except ImportError:
            pass
    return "adamw_torch"


def make_trainer(model, train: Blocks, held_out: Blocks, checkpoints: Path, monitor: TrainingMonitor, *, steps: int,
                 lr: float, batch_size: int, seed: int, device: torch.device, checkpointing: bool,
                 fp16: bool) -> Trainer:
    from transformers import PrinterCallback

    args = TrainingArguments(
        output_dir=str(checkpoints), max_steps=steps, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size, learning_rate=lr, seed=seed, data_seed=seed,
        optim=optimizer_name(device), fp16=fp16, use_cpu=device.type == "cpu",
        # (named activation_checkpointing from transformers 5.24 on; Colab's 5.15 knows only this name)
        **({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
           if checkpointing else {}),
        save_strategy="steps", save_steps=max(1, min(50, steps // 4)), save_total_limit=2,
        eval_strategy="steps", eval_steps=max(1, steps // 5), logging_steps=1,
        report_to=[], disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=held_out, callbacks=[monitor])
    trainer.remove_callback(PrinterCallback)  # it prints every log as a dict; progress goes to on_progress
    return trainer


def resumed_settings(out: Path, settings: dict) -> None:
    """Refuse to resume a run with other LoRA settings than it started with (its checkpoints would not load)."""
    try:
        earlier = json.loads((out / MARK).read_text()).get("settings", {})
    except (OSError, ValueError):
        return
    changed = [f"{key} {earlier[key]} (now {value})" for key, value in settings.items()
               if key in earlier and earlier[key] != value]
    if changed:
        raise SettingsError(f"The run in {out} was started with {', '.join(changed)}: resume it with the same "
                            "settings, or start a new run in another folder.")
