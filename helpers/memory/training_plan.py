"""What LoRA/QLoRA training needs: peak memory by plan (weights, adapter, optimizer, activations, overhead)."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass

from ..errors import MemoryBudgetError
from ..opt.sizes import SIZES, OPTSize, get_size, parameter_breakdown
from ..units import human_bytes
from .bytes import weight_bytes
from .planner import CPU_PROCESS_BYTES, CUDA_CONTEXT_BYTES, Budget

# plan -> (how the frozen weights are stored, the device it trains on), in the order `auto` prefers them:
# the most faithful first (fp16 weights, then 8-bit, then 4-bit), the CPU last.
TRAINING_PLANS: dict[str, tuple[str, str]] = {
    "lora-fp16": ("float16", "cuda"), "lora-int8": ("int8", "cuda"), "qlora-nf4": ("nf4", "cuda"),
    "lora-fp32": ("float32", "cpu")}
DESCRIPTIONS = {"lora-fp16": "LoRA on fp16 weights (GPU, fp16 mixed precision)",
                "lora-int8": "LoRA on 8-bit weights (GPU, bitsandbytes LLM.int8)",
                "qlora-nf4": "QLoRA: LoRA on 4-bit NF4 weights (GPU, bitsandbytes)",
                "lora-fp32": "LoRA on fp32 weights (CPU)"}
DEFAULT_TARGETS = ("q_proj", "v_proj")  # peft's OPT example; each is a d_model x d_model Linear
OPTIMIZER_STATE_BYTES = {"adamw": 8, "paged_adamw_8bit": 2}  # per trainable parameter: two moments
# On the CPU, glibc keeps freed blocks below its mmap threshold (raised to 32 MiB after the first big free) in
# its heap, and fragmentation keeps them resident: measured (tests/test_training_plan.py), one layer's
# activations plus 0.6 of a layer's per layer stay beside the live tensors at the peak. CUDA's caching
# allocator has no such term beyond the slack in CUDA_CONTEXT_BYTES, which the inference planner reserves too.
CPU_HEAP_LAYERS = (1.0, 0.6)
# `auto` prefers a plan that fits with this share of the budget to spare (the planner's stated accuracy) over a
# more faithful one that only just fits: on a T4, 6.7B lora-int8 (9.1 GiB) before lora-fp16 (14.6 of 15 GiB).
AUTO_HEADROOM = 0.10
CPU_STEP_BYTES = 24 * 1024**2  # and a step's small allocations beside them (autograd's graph, peft's, AdamW's)


def _size(size: OPTSize | str) -> OPTSize:
    return get_size(size) if isinstance(size, str) else size


def lora_parameters(size: OPTSize | str, rank: int = 16, targets: tuple[str, ...] = DEFAULT_TARGETS) -> int:
    """Trainable parameters LoRA adds: rank x (in + out) for each targeted d_model x d_model Linear per layer."""
    size = _size(size)
    return size.layers * len(targets) * rank * 2 * size.d_model


def _weights(size: OPTSize, storage: str) -> int:
    """Frozen weights as the plan stores them. For 8/4-bit, peft's `prepare_model_for_kbit_training` (peft's
    and our k-bit recipe) casts what bitsandbytes leaves unquantized (embeddings, norms, biases) to fp32."""
    stored = weight_bytes(size, storage)
    if storage in ("int8", "nf4"):
        p = parameter_breakdown(size)
        stored += 2 * (p.embeddings + p.projections + p.small)  # fp16 -> fp32
    return stored


def _layer_activations(size: OPTSize, tokens: int, rank: int, act: int) -> int:
    """What one decoder layer keeps for backward (scaled dot-product attention, transformers' default, keeps
    no seq x seq scores): the two norms' inputs, q/k/v and the attention output, the LoRA inputs after their
    dropout, fc1's activation, in the compute dtype; dropout masks (a byte each); fp32 norm and softmax stats."""
    d, f, targets = size.d_model, size.ffn, len(DEFAULT_TARGETS)
    per_token = act * ((6 + targets) * d + f + targets * rank) + (2 + targets) * d + 4 * (size.heads + 4)
    return tokens * per_token


def training_peak_bytes(size: OPTSize | str, plan: str, *, seq_len: int, batch_size: int, rank: int = 16,
                        gradient_checkpointing: bool = True, device: str | None = None,
                        optimizer: str | None = None) -> dict[str, int]:
    """The peak of one training step, term by term (bytes; `total` is their sum). `device` defaults to the
    plan's; `optimizer` to bitsandbytes' paged 8-bit AdamW on a GPU (peft's recipe) and torch's AdamW on the CPU.

    The peak comes at the start of backward: the logits' three vocab-wide fp32 tensors (log-softmax output,
    its gradient in and out: OPT's 50272-token vocabulary makes them the largest term at short lengths) on top
    of the saved activations; or later, while one checkpointed layer is recomputed, whichever is larger."""
    size = _size(size)
    if plan not in TRAINING_PLANS:
        raise ValueError(f"'{plan}' is not a training plan. Plans: {', '.join(TRAINING_PLANS)}.")
    if seq_len < 2 or seq_len > size.max_positions:
        raise ValueError(f"seq_len must be between 2 and {size.max_positions} tokens (got {seq_len}).")
    if batch_size < 1 or rank < 1:
        raise ValueError(f"batch_size and rank must be at least 1 (got {batch_size} and {rank}).")
    storage, plan_device = TRAINING_PLANS[plan]
    device = (device or plan_device).split(":")[0]
    optimizer = optimizer or ("adamw" if device == "cpu" else "paged_adamw_8bit")
    act = 4 if storage == "float32" else 2
    tokens = seq_len * batch_size
    adapter = lora_parameters(size, rank)
    layer = _layer_activations(size, tokens, rank, act)
    boundary = tokens * size.d_model * act  # a layer's input, all a checkpointed layer keeps
    kept = size.layers * boundary if gradient_checkpointing else size.layers * layer
    kept += tokens * size.d_model * act  # the final norm's input
    logits = 3 * tokens * size.vocab_size * 4
    recompute = (layer if gradient_checkpointing else 0) + tokens * (2 * size.ffn + 4 * size.d_model) * act
    if storage in ("int8", "nf4"):  # bitsandbytes' backward dequantizes a frozen matrix (fc1's, the largest) in fp16
        recompute += 2 * size.d_model * size.ffn
    breakdown = {
        "weights": _weights(size, storage),
        "lora_parameters": adapter * 4,  # fp32 master copies, whatever the weights' dtype
        "lora_gradients": adapter * 4,
        "optimizer_state": adapter * OPTIMIZER_STATE_BYTES[optimizer],
        "activations": kept + max(logits, recompute),
        "logits": logits,  # included in activations: shown because it is often the largest part
    }
    if device == "cpu":
        breakdown["allocator"] = int((CPU_HEAP_LAYERS[0] + CPU_HEAP_LAYERS[1] * size.layers) * layer) + CPU_STEP_BYTES
        breakdown["overhead"] = CPU_PROCESS_BYTES
    else:
        breakdown["overhead"] = CUDA_CONTEXT_BYTES
    breakdown["total"] = sum(v for k, v in breakdown.items() if k != "logits")
    return breakdown


@dataclass(frozen=True)
class TrainingOption:
    """One way to train a size on a budget, with its predicted peak and why it does not fit (if so)."""

    size: str
    plan: str
    fits: bool
    peak_bytes: int  # on the device it trains on, overhead (CUDA context, or the process on the CPU) included
    breakdown: dict[str, int]
    device: str
    reason: str  # why it does not fit or is unavailable ("" when it fits)
    budget_bytes: int = 0  # the memory it is planned against (the GPU's, or RAM for the CPU plan)

    @property
    def comfortable(self) -> bool:
        """Fits with AUTO_HEADROOM of the budget to spare."""
        return self.fits and self.peak_bytes <= (1 - AUTO_HEADROOM) * self.budget_bytes

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.plan]

    @property
    def predicted_peak_bytes(self) -> int:
        """The peak a measurement sees: the GPU's allocated memory, or the growth of resident memory (so
        without the CUDA context or the process itself)."""
        return self.peak_bytes - self.breakdown["overhead"]

    def as_dict(self) -> dict:
        return asdict(self) | {"description": self.description, "predicted_peak_bytes": self.predicted_peak_bytes}

    def row(self) -> dict:
        """A table row for people, in `plan`'s style."""
        b = self.breakdown
        return {"plan": self.plan, "device": self.device, "peak": human_bytes(self.peak_bytes),
                "weights": human_bytes(b["weights"]),
                "adapter+optimizer": human_bytes(b["lora_parameters"] + b["lora_gradients"] + b["optimizer_state"]),
                "activations": human_bytes(b["activations"]), "status": self._status()}

    def _status(self) -> str:
        if not self.fits:
            return self.reason
        spare = self.budget_bytes - self.peak_bytes
        return "fits" if self.comfortable else f"fits, {human_bytes(spare)} spare (auto prefers more room)"


def _unavailable(storage: str, device: str, budget: Budget) -> str:
    if device == "cuda" and not budget.gpus:
        return "needs a CUDA GPU"
    if storage in ("int8", "nf4") and importlib.util.find_spec("bitsandbytes") is None:
        return "needs bitsandbytes (pip install bitsandbytes)"
    return ""


def plan_training(size: OPTSize | str, budget: Budget | None = None, *, seq_len: int = 512, batch_size: int = 4,
                  rank: int = 16, gradient_checkpointing: bool = True) -> list[TrainingOption]:
    """Every training plan for `size` on `budget` (default: this machine), in `auto`'s order of preference."""
    size = _size(size)
    budget = budget or Budget.of_machine()
    options = []
    for name, (storage, device) in TRAINING_PLANS.items():
        b = training_peak_bytes(size, name, seq_len=seq_len, batch_size=batch_size, rank=rank,
                                gradient_checkpointing=gradient_checkpointing)
        have = budget.gpu_bytes if device == "cuda" else budget.cpu_bytes
        where = f"the GPU's {human_bytes(budget.gpu_bytes)}" if device == "cuda" else f"{human_bytes(have)} of RAM"
        reason = _unavailable(storage, device, budget) or (
            "" if b["total"] <= have else f"needs {human_bytes(b['total'])}, more than {where}")
        options.append(TrainingOption(size=size.name, plan=name, fits=not reason, peak_bytes=b["total"], breakdown=b,
                                      device=device, reason=reason, budget_bytes=have))
    return options


def choose_training(options: list[TrainingOption], plan_name: str = "auto", *,
                    model: str = "the model") -> TrainingOption:
    """`auto`: the first plan (fp16, then 8-bit, 4-bit, the CPU) that fits with AUTO_HEADROOM to spare, else the
    first that fits; a named plan must fit. If not, MemoryBudgetError with the planner's figures and the plans
    that do fit."""
    fitting = [o for o in options if o.fits]
    if plan_name == "auto":
        if fitting:
            return next((o for o in fitting if o.comfortable), fitting[0])
        smallest = min(options, key=lambda o: o.peak_bytes)
        raise MemoryBudgetError(
            f"No training plan fits {model} here: {'; '.join(f'{o.plan} {o.reason}' for o in options)}. The smallest, "
            f"{smallest.plan}, needs {human_bytes(smallest.peak_bytes)}: try a smaller size, a shorter --seq-len "
            "or a smaller batch.")
    named = next((o for o in options if o.plan == plan_name), None)
    if named is None:
        raise ValueError(f"'{plan_name}' is not a training plan. Plans: auto, {', '.join(TRAINING_PLANS)}.")
    if named.fits:
        return named
    others = ", ".join(f"--plan {o.plan} ({human_bytes(o.peak_bytes)})" for o in fitting)
    raise MemoryBudgetError(
        f"{plan_name} on {model} {named.reason} (the planner's peak for one training step). "
        f"Try {others + ' or ' if others else ''}a smaller size, a shorter --seq-len or a smaller batch.")


def largest_trainable(budget: Budget | None = None, *, plan_name: str = "auto", **kw) -> TrainingOption:
    """The largest OPT size that `plan_name` (`auto`: any plan, the most faithful first) trains on `budget`."""
    budget = budget or Budget.of_machine()
    for size in reversed(SIZES.values()):
        fitting = [o for o in plan_training(size, budget, **kw) if o.fits and plan_name in ("auto", o.plan)]
        if fitting:
            return choose_training(fitting) if plan_name == "auto" else fitting[0]
    raise MemoryBudgetError(f"Not even {next(iter(SIZES))} trains with plan {plan_name} on {budget.describe()}: "
                            "try a shorter --seq-len or a smaller batch.")
