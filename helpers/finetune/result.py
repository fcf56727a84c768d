"""What a fine-tuning run reports: `TrainingProgress` as it goes, `FinetuneResult` at the end."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainingProgress:
    """One optimizer step done (or a held-out evaluation): what a progress bar or a loss curve shows."""

    step: int
    total_steps: int
    loss: float | None  # the training loss logged at this step (None between logging steps)
    held_out_loss: float | None  # set when the held-out part was evaluated at this step
    tokens_per_second: float
    elapsed_s: float


def perplexity(loss: float) -> float:
    """exp(loss), infinite where that overflows a float."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


@dataclass(frozen=True)
class FinetuneResult:
    """A finished (or stopped) fine-tuning run: where the adapter went and what the training did."""

    adapter_dir: Path
    plan: str
    steps: int  # optimizer steps the adapter has had in all (a resumed run counts the earlier ones)
    interrupted: bool  # stopped (Stop, Ctrl-C) before `total_steps`: the adapter so far was saved
    loss_before: float  # mean held-out loss per token of the model without the adapter
    loss_after: float
    perplexity_before: float
    perplexity_after: float
    train_tokens: int  # tokens trained on in this run
    tokens_per_second: float
    peak_memory_bytes: int  # GPU memory allocated (CUDA), else this process's peak resident memory
    trainable_parameters: int
    total_steps: int = 0
    merged_dir: Path | None = None  # the merged model's folder (merge=True)

    def as_dict(self) -> dict:
        """The --json fields."""
        return {
            "adapter_dir": str(self.adapter_dir), "plan": self.plan, "steps": self.steps,
            "total_steps": self.total_steps, "interrupted": self.interrupted,
            "loss_before": self.loss_before, "loss_after": self.loss_after,
            "perplexity_before": self.perplexity_before, "perplexity_after": self.perplexity_after,
            "train_tokens": self.train_tokens, "tokens_per_second": self.tokens_per_second,
            "peak_memory_bytes": self.peak_memory_bytes, "trainable_parameters": self.trainable_parameters,
            "merged_dir": None if self.merged_dir is None else str(self.merged_dir),
        }

    def summary(self) -> str:
        """One line for people."""
        from ..units import human_bytes

        state = f"stopped at step {self.steps} of {self.total_steps}" if self.interrupted else f"{self.steps} steps"
        return (f"{self.plan}, {state}: held-out loss {self.loss_before:.3f} -> {self.loss_after:.3f} (perplexity "
                f"{self.perplexity_before:.1f} -> {self.perplexity_after:.1f}), {self.tokens_per_second:.0f} tokens/s, "
                f"peak memory {human_bytes(self.peak_memory_bytes)}, {self.trainable_parameters:,} trainable "
                f"parameters; adapter in {self.adapter_dir}")
