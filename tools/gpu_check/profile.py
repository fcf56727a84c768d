"""What a check run measures and on what: the GPU profile (real OPT shapes on a T4-sized budget) and the dry run."""

from __future__ import annotations

from dataclasses import dataclass, field

from helpers.memory.summaries import KNOWN_MACHINES
from helpers.opt.sizes import SIZES, OPTSize

SCHEMA = "opt-notebooks/gpu-check/v1"
T4 = KNOWN_MACHINES["Colab T4 (15 GiB, 12 GiB RAM)"]

# A free Colab's RAM as last reported, about 2 GB of which Colab's own processes use (shared/colab/README.md).
COLAB_RAM_BYTES = 12.7e9
COLAB_RAM_USED_AT_START_BYTES = 2e9
STATUSES = ("ok", "unavailable", "failed", "skipped")


@dataclass(frozen=True)
class Profile:
    """What one run measures, and with what."""

    name: str
    device: str
    dtype: str
    small: OPTSize  # every decoding method, and the load/unload cycles
    medium: OPTSize  # fp16 under a T4's budget with a full context, loading RAM, the batch sweep
    large: OPTSize  # 8-bit under the same budget
    fit_plan: str  # the medium's plan
    quantized_plan: str  # the large's plan
    gpu_memory: int | None  # the T4 budget the fits are checked under
    context: int  # tokens per sequence in the fit checks (OPT's whole context on a GPU)
    fit_new_tokens: int
    large_new_tokens: int
    methods: tuple[str, ...]  # the small model's, in order: the first pays any compilation in a fresh process
    new_tokens: int
    repeats: int
    sweep_batches: tuple[int, ...]
    sweep_new_tokens: int
    sweep_repeats: int
    shard_size: str  # the checkpoint shards, as the hub's
    leak_cycles: int
    train_plans: tuple[str, str]  # LoRA training: the small model's plan, the medium's
    train_seq_len: int
    train_batch: int
    train_steps: int
    budget_seconds: float
    grace_seconds: float  # past the budget, the hard limit
    estimates: dict[str, float] = field(default_factory=dict)  # seconds a step needs: it starts only if they are left


GPU = Profile(
    name="gpu", device="cuda", dtype="float16",
    small=SIZES["opt-1.3b"], medium=SIZES["opt-6.7b"], large=SIZES["opt-13b"],
    fit_plan="fp16", quantized_plan="int8", gpu_memory=T4.gpu_bytes, context=2048, fit_new_tokens=256,
    large_new_tokens=64, methods=("auto", "hf", "static", "auto+int8", "auto+nf4"),
    new_tokens=128, repeats=2, sweep_batches=(1, 2, 4, 8, 16, 32, 64), sweep_new_tokens=32, sweep_repeats=2,
    shard_size="10GB",  # transformers' former default: the hub's OPT-6.7B is two shards, 9.96 GB and 3.36 GB
    leak_cycles=5, train_plans=("lora-fp16", "lora-int8"), train_seq_len=512, train_batch=4, train_steps=4,
    budget_seconds=450, grace_seconds=90,
    # Guesses before any run (a step starts only if they are left): each run records what its steps took.
    estimates={"medium-folder": 15, "medium-load-ram": 25, "medium-fit": 60, "large-fit": 60, "small-folder": 5,
               "small-auto": 40, "small-hf": 10, "small-static": 25, "small-auto+int8": 20,
               "small-auto+nf4": 15, "small-leaks": 30, "medium-sweep": 50, "medium-train-lora-int8": 45,
               "small-train-lora-fp16": 20},
)
DRY_RUN = Profile(
    name="dry-run", device="cpu", dtype="float32",
    small=OPTSize("dry-1.3b", 2, 4, 64, 256, 64, True), medium=OPTSize("dry-6.7b", 4, 4, 128, 512, 128, True),
    large=OPTSize("dry-13b", 4, 4, 160, 640, 160, True),
    fit_plan="fp32-cpu", quantized_plan="int8", gpu_memory=None, context=64, fit_new_tokens=8,
    large_new_tokens=8, methods=GPU.methods, new_tokens=8, repeats=2, sweep_batches=(1, 2, 4), sweep_new_tokens=6,
    sweep_repeats=1, shard_size="20MB",  # two shards, like the hub's
    leak_cycles=5, train_plans=("lora-fp32", "lora-int8"), train_seq_len=32, train_batch=2, train_steps=3,
    budget_seconds=900, grace_seconds=300,
)


class Unavailable(Exception):
    """A step this machine cannot run (no GPU, no bitsandbytes): recorded with the reason, not as a failure."""


class OutOfTime(BaseException):
    """The run reached its hard time limit (a BaseException, so that no library's `except Exception` hides it)."""
