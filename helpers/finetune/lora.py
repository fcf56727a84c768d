"""The training plans (LoRA in fp16, int8, NF4 or fp32) and the peft model each one trains."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import SettingsError

if TYPE_CHECKING:  # torch-free at import: the command line's --help lists the plans
    import torch

TARGET_MODULES = ("q_proj", "v_proj")  # peft's OPT example, and the original LoRA paper's choice
LORA_DROPOUT = 0.05
MAX_RANK = 256
MAX_LR = 1e-2  # LoRA's usual rates are 1e-4 to 1e-3; above 1e-2 the adapter's updates diverge (loss goes to nan)


@dataclass(frozen=True)
class TrainingPlan:
    """How the base model is held while its adapter trains."""

    name: str
    load_plan: str  # the inference planner's method that loads the base model (`load_model(plan=...)`)
    device: str  # 'cuda' or 'cpu'
    quantized: bool  # int8/NF4 weights: peft's prepare_model_for_kbit_training first
    what: str


PLANS = {plan.name: plan for plan in (
    TrainingPlan("lora-fp16", "fp16", "cuda", False, "fp16 weights on the GPU, fp16 mixed precision"),
    TrainingPlan("lora-int8", "int8", "cuda", True, "8-bit weights (bitsandbytes) on the GPU"),
    TrainingPlan("qlora-nf4", "nf4", "cuda", True, "4-bit NF4 weights (bitsandbytes, QLoRA) on the GPU"),
    TrainingPlan("lora-fp32", "fp32-cpu", "cpu", False, "fp32 weights on the CPU"),
)}
PLAN_CHOICES = (*PLANS, "auto")


def get_plan(name: str) -> TrainingPlan:
    if name not in PLANS:
        raise SettingsError(f"Unknown training plan {name!r}: choose one of {', '.join(PLAN_CHOICES)}.")
    return PLANS[name]


def check_hyperparameters(lr: float, rank: int, alpha: int | None, steps: int, batch_size: int) -> None:
    """Refuse settings out of range, each with the range it takes."""
    if not 0 < lr <= MAX_LR:
        raise SettingsError(f"The learning rate must be above 0 and at most {MAX_LR:g}, not {lr:g}: LoRA usually "
                            f"trains with 1e-4 to 1e-3 (default 2e-4); above {MAX_LR:g} its updates diverge.")
    if not 1 <= rank <= MAX_RANK:
        raise SettingsError(f"The LoRA rank must be a whole number from 1 to {MAX_RANK}, not {rank}: 8 or 16 is "
                            "usual (default 16); a higher rank trains more parameters for little gain.")
    if alpha is not None and alpha <= 0:
        raise SettingsError(f"LoRA's alpha must be above 0, not {alpha} (default: twice the rank).")
    if steps < 1 or batch_size < 1:
        raise SettingsError(f"Steps and batch size must be at least 1 (got steps {steps}, batch size {batch_size}).")


def lora_config(rank: int, alpha: int | None = None):
    """peft's LoRA settings for OPT: rank `rank`, alpha twice the rank unless given, on q_proj and v_proj."""
    from peft import LoraConfig, TaskType

    return LoraConfig(r=rank, lora_alpha=2 * rank if alpha is None else alpha, lora_dropout=LORA_DROPOUT,
                      target_modules=list(TARGET_MODULES), bias="none", task_type=TaskType.CAUSAL_LM)


def with_adapter(model: torch.nn.Module, plan: TrainingPlan, rank: int, alpha: int | None,
                 gradient_checkpointing: bool):
    """The base model wrapped by peft with a new LoRA adapter (the only trainable weights)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if plan.quantized:  # casts norms to fp32 and makes the inputs carry gradients through frozen 8/4-bit layers
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:  # checkpointed layers need an input that requires grad to backpropagate
        model.enable_input_require_grads()
    with warnings.catch_warnings():  # peft 0.21 reads a property transformers 5.24 deprecates: not the user's to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        return get_peft_model(model, lora_config(rank, alpha))


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
