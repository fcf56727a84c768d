"""What fits a memory budget: each way to load a model, its predicted peaks and speed, ranked by `plan()`."""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import asdict, dataclass, field

from ..environment import Environment, detect
from ..errors import MemoryBudgetError, ModelLoadError
from ..opt.sizes import OPTSize, get_size
from ..units import human_bytes
from .bytes import GiB, activation_bytes, kv_cache_bytes_per_token, pieces, weight_bytes
from .dtypes import compute_bytes

CUDA_CONTEXT_BYTES = GiB // 2  # the CUDA context and allocator slack: in a GPU's budget, not in torch's count
CPU_PROCESS_BYTES = GiB  # Python, torch and transformers themselves
CPU_PROCESS_BYTES_CUDA = 2 * GiB  # ... plus CUDA's host-side libraries
LOAD_SHARD_BYTES = 2 * GiB  # loading reads at most about one checkpoint shard into RAM at a time
TOKENIZER_BYTES = 32 * 1024**2  # OPT's BPE tokenizer in memory
CPU_BF16_WORKING_BYTES = 16 * 1024**2  # bf16-cpu's extra (the kernel loaded, fp32 norms): measured at 44M and 125M
INT8_WEIGHTS_WORKING_BYTES = 16 * 1024**2  # int8-weights-cpu's quantizing blocks, heap they leave, its kernel: measured

# Memory bandwidth by GPU name (vendor datasheets), for the speed estimate only.
GPU_BANDWIDTH = {"T4": 320e9, "L4": 300e9, "A10": 600e9, "V100": 900e9, "A100": 1800e9, "L40": 864e9,
                 "H100": 3350e9, "H200": 4800e9, "RTX 4090": 1008e9, "RTX 3090": 936e9}
DEFAULT_GPU_BANDWIDTH = 500e9
CPU_BANDWIDTH = 20e9  # what a one-row matrix product reaches on a typical laptop or Colab CPU
PCIE_BANDWIDTH = 12e9  # offloaded weights cross it at every step
DISK_BANDWIDTH = 1e9
QUANTIZED_EFFICIENCY = {"int8": 0.25, "nf4": 0.5}  # bitsandbytes' kernels dequantize as they go
SPEED_CLASSES = ((20, "fast"), (5, "interactive"), (1, "slow"), (0, "very slow"))
QUALITY = {"float16": "exact (fp16)", "bfloat16": "exact (bf16)", "float32": "exact (fp32)",
           "int8": "near-exact (8-bit)", "nf4": "lossy (4-bit)", "int8-dynamic": "approximate (8-bit activations)",
           "int8-weights": "near-exact (8-bit weights)"}


@dataclass(frozen=True)
class Budget:
    """Memory to plan against: per GPU (all alike), the number of GPUs, RAM, and disk for offload."""

    gpu_bytes: int = 0
    gpus: int = 0
    cpu_bytes: int = 0
    disk_bytes: int | None = None  # None: enough
    gpu_name: str = ""
    bf16: bool = False  # the GPUs compute in bf16 (compute capability 8.0 and up)
    cpu_bf16: bool = False  # the fused bf16/int8 kernel runs on the CPU (AVX2, FMA): bf16-cpu beats fp32

    @classmethod
    def of_machine(cls, env: Environment | None = None, gpu_bytes: int | None = None, gpus: int | None = None,
                   cpu_bytes: int | None = None) -> Budget:
        """This machine's budget; any figure given overrides what was detected."""
        if gpus is not None and (not isinstance(gpus, int) or gpus < 0):
            raise ValueError(f"The number of GPUs must be 0 or more, not {gpus!r}.")
        env = env or detect()
        first = env.gpus[0] if env.gpus else None
        count = gpus if gpus is not None else len(env.gpus)
        per_gpu = gpu_bytes if gpu_bytes is not None else (first.total_bytes if first else 0)
        return cls(gpu_bytes=per_gpu if count else 0, gpus=count if per_gpu else 0,
                   cpu_bytes=cpu_bytes if cpu_bytes is not None else env.ram_available_bytes,
                   gpu_name=first.name if first else "", bf16=bool(first and first.supports_bf16),
                   cpu_bf16=env.cpu_bf16)

    def describe(self) -> str:
        gpus = f"{self.gpus} GPU(s) of {human_bytes(self.gpu_bytes)}" if self.gpus else "no GPU"
        return f"{gpus} and {human_bytes(self.cpu_bytes)} of RAM"


@dataclass
class Option:
    """One way to load a model (a memory plan, by its name), with what it needs."""

    plan: str
    description: str
    dtype: str  # the weights' dtype (or the quantization)
    placement: dict[str, str]  # module -> "cuda:N" / "cpu" / "disk"
    gpu_bytes_each: list[int]  # predicted peak memory allocated on each GPU
    gpu_bytes: int  # the most any one GPU needs from its budget (peak + CUDA context)
    cpu_bytes: int  # RAM: the process, offloaded weights, and loading
    disk_bytes: int
    tokens_per_second: float  # a rough decode estimate from the bandwidths involved
    speed_class: str
    quality: str
    fits: bool = False
    available: bool = True
    unavailable_reason: str = ""
    notes: list[str] = field(default_factory=list)
    auto_skips: str = ""  # why `auto` never picks it here, though a request by name may

    @property
    def usable(self) -> bool:
        """`auto` may pick it: it fits, runs here, and has no reason to be asked for by name only."""
        return self.fits and self.available and not self.auto_skips

    @property
    def needs_bytes(self) -> int:
        """What it takes from the memory it is short of first: the GPU's when it uses one, else RAM."""
        return self.gpu_bytes or self.cpu_bytes

    @property
    def predicted_peak_bytes(self) -> int:
        """The peak a measurement sees: memory allocated on the first GPU when it uses one, else the RAM
        the process grows by (the process itself, Python, torch and transformers, is not counted)."""
        return self.gpu_bytes_each[0] if self.gpu_bytes_each else self.cpu_bytes - CPU_PROCESS_BYTES

    @property
    def method(self) -> str:
        """The plan's name under its old attribute name (a method is a decoding backend): use `.plan`."""
        warnings.warn("Option.method is deprecated: a memory plan's name is Option.plan", DeprecationWarning,
                      stacklevel=2)
        return self.plan

    def as_dict(self) -> dict:
        data = {key: value for key, value in asdict(self).items() if key != "placement"}
        return {**data, "method": self.plan, "devices": sorted(set(self.placement.values()))}  # method: its first name

    def row(self) -> dict:
        """A table row for people."""
        gpus = "/".join(human_bytes(b) for b in self.gpu_bytes_each) if self.gpu_bytes_each else "-"
        status = "fits" if self.fits else "too big"
        if self.fits and not self.available:
            status = f"fits, but {self.unavailable_reason}"
        return {"plan": self.plan, "GPU peak": gpus, "RAM": human_bytes(self.cpu_bytes),
                "disk": human_bytes(self.disk_bytes) if self.disk_bytes else "-",
                "speed": f"~{self.tokens_per_second:.1f} tok/s ({self.speed_class})", "quality": self.quality,
                "status": status}


def check_fits(size: OPTSize, plan_name: str, budget: Budget, *, context: int | None, batch: int, what: str) -> None:
    """Raise MemoryBudgetError before `what` starts if plan `plan_name` (the way it will load) does not fit."""
    context = size.max_positions if context is None else context
    option = next((o for o in plan(size, budget, context=context, batch=batch) if o.plan == plan_name), None)
    if option is None or option.fits:
        return
    raise MemoryBudgetError(
        f"{what} would not fit in memory: {size.name} as {option.description} needs about "
        f"{human_bytes(option.cpu_bytes)} of RAM{_and_gpu(option)} (the planner's estimate for a context of "
        f"{context} and batch {batch}), and this machine has {budget.describe()}. Use a smaller model, or see "
        f"`python -m helpers plan --model {size.name}` for what fits.")


def plain_plan(device: str, dtype: str) -> str | None:
    """The plan that loading on `device` in `dtype` without a plan amounts to (None: none describes it)."""
    return {("cpu", "float32"): "fp32-cpu", ("cpu", "bfloat16"): "bf16-cpu", ("cuda", "float16"): "fp16",
            ("cuda", "bfloat16"): "bf16"}.get((device.split(":")[0], dtype))



def _and_gpu(option: Option) -> str:
    return f" and {human_bytes(option.gpu_bytes)} of GPU memory" if option.gpu_bytes else ""


def _speed(bytes_on: dict[str, int], budget: Budget, storage: str) -> float:
    gpu_bw = next((bw for name, bw in GPU_BANDWIDTH.items() if name in budget.gpu_name), DEFAULT_GPU_BANDWIDTH)
    efficiency = QUANTIZED_EFFICIENCY.get(storage, 1.0)
    seconds = sum(b for dev, b in bytes_on.items() if dev.startswith("cuda")) / (gpu_bw * efficiency)
    cpu_rate = CPU_BANDWIDTH if all(not d.startswith("cuda") for d in bytes_on) else PCIE_BANDWIDTH
    seconds += bytes_on.get("cpu", 0) / cpu_rate + bytes_on.get("disk", 0) / DISK_BANDWIDTH  # int8 too: a fused kernel
    return 1.0 / seconds if seconds else 0.0


def _speed_class(tokens_per_second: float) -> str:
    return next(name for floor, name in SPEED_CLASSES if tokens_per_second >= floor)


# ------------------------------------------------------------------------------------------ options


def _place(size: OPTSize, storage: str, budget: Budget, devices: list[str], context: int, batch: int,
           offload_storage: str) -> tuple[dict[str, str], dict[str, int], dict[str, int]]:
    """Fill `devices` in order, as accelerate's device maps do: each module where it still fits, the rest
    on the last device. Returns (module -> device, weight bytes per place, peak bytes per device).

    Modules a GPU plan keeps in RAM or on disk still run on the first GPU: accelerate streams their
    weights in one module at a time, and their caches live there, so the first GPU reserves the largest
    module and every layer's cache up front. Only bitsandbytes' fp32 CPU offload runs its modules on the
    CPU, caches included.
    """
    computed = _computed_as(storage, devices)
    working = activation_bytes(size, context, batch, compute_bytes(computed))
    kv_per_layer = kv_cache_bytes_per_token(size, computed) // size.layers * context * batch
    gpus = [d for d in devices if d.startswith("cuda")]
    runs_on_cpu = not gpus or offload_storage == "float32"
    streams = bool(gpus) and ("disk" in devices or ("cpu" in devices and not runs_on_cpu))
    execution = gpus[0] if gpus else "cpu"
    capacity = _capacities(budget, gpus, working)
    reserve = 0
    if streams:
        reserve = pieces(size)[-1].weight_bytes(offload_storage) + kv_per_layer * size.layers
        capacity[execution] -= reserve
    placement, stored, peak = {}, dict.fromkeys(devices, 0), dict.fromkeys(gpus + ["cpu"], 0)
    which = 0
    for piece in pieces(size):
        weight = _stored_bytes(size, piece, storage if devices[which].startswith("cuda") or not gpus else offload_storage)
        cache = kv_per_layer if piece.layer else 0

        def adds(device: str, weight: int = weight, cache: int = cache) -> int:
            """What the piece adds to the memory of the device it would be placed on."""
            if device == execution and streams:
                return weight  # its cache is in the reserve
            if device.startswith("cuda") or (device == "cpu" and runs_on_cpu):
                return weight + cache
            return weight if device == "cpu" else 0

        # accelerate refuses a map with the whole model on disk (1.14: "offload the whole model to the disk"),
        # so the first piece, the token table every step starts from, stays in memory whatever it costs
        last = len(devices) - 1 - (not placement and devices[-1] == "disk")
        while which < last and peak.get(devices[which], 0) + adds(devices[which]) > capacity[devices[which]]:
            which += 1
        device = devices[which]
        placement[piece.name] = device
        stored[device] += weight
        if device in peak:
            peak[device] += adds(device)
    peak[execution] += reserve
    for device in gpus:
        if stored[device]:
            peak[device] += working
    placement["lm_head"] = placement["model.decoder.embed_tokens"]  # tied: they share one tensor
    return placement, stored, peak


def _computed_as(storage: str, devices: list[str]) -> str:
    """The dtype of the activations and the cache: the CPU engine computes bf16 weights in fp32."""
    return "float32" if storage == "bfloat16" and devices == ["cpu"] else storage


def _capacities(budget: Budget, gpus: list[str], working: int) -> dict[str, float]:
    """What each place can hold for weights and caches: the budget less the CUDA context, this process and
    the working memory of wherever the model runs; the disk without limit."""
    capacity: dict[str, float] = {d: budget.gpu_bytes - CUDA_CONTEXT_BYTES - working for d in gpus}
    if gpus:
        capacity["cpu"] = budget.cpu_bytes - CPU_PROCESS_BYTES_CUDA - LOAD_SHARD_BYTES
    else:
        capacity["cpu"] = budget.cpu_bytes - CPU_PROCESS_BYTES - TOKENIZER_BYTES - working
    capacity["disk"] = float("inf")
    return capacity


def _stored_bytes(size: OPTSize, piece, kind: str) -> int:
    """A piece's weight bytes stored as `kind`. The token table has no matrices a quantization shrinks, so
    bitsandbytes leaves it (and the tied lm_head) in fp16; torch's dynamic int8 adds lm_head's own copy."""
    weight = piece.weight_bytes(kind)
    if piece.name == "model.decoder.embed_tokens" and kind in ("int8-dynamic", "int8-weights"):
        weight += size.vocab_size * (size.word_embed_proj_dim + 4 * (kind == "int8-weights"))  # lm_head's int8 copy
    return weight


def _option(name: str, description: str, size: OPTSize, budget: Budget, storage: str, devices: list[str],
            context: int, batch: int, offload_storage: str | None = None) -> Option:
    offload_storage = offload_storage or storage
    placement, stored, peak = _place(size, storage, budget, devices, context, batch, offload_storage)
    gpus = [d for d in devices if d.startswith("cuda")]
    gpu_each = [peak[d] for d in gpus]
    if gpus:
        cpu = CPU_PROCESS_BYTES_CUDA + peak["cpu"] + min(LOAD_SHARD_BYTES, weight_bytes(size, "float16"))
    else:
        working = activation_bytes(size, context, batch, compute_bytes(_computed_as(storage, devices)))
        cpu = CPU_PROCESS_BYTES + TOKENIZER_BYTES + peak["cpu"] + working
        if storage == "int8-dynamic":  # quantizing holds a layer in fp32 beside the int8 copies; fbgemm packs again
            layers = [p for p in pieces(size) if p.layer]
            cpu += layers[0].weight_bytes("float32")
            cpu += int(0.4 * (sum(p.matrices for p in layers) + size.vocab_size * size.word_embed_proj_dim))
        if storage in ("float32", "bfloat16") and "disk" not in devices:  # the engine packs q/k/v in one matrix
            cpu += 3 * size.d_model**2 * compute_bytes(storage) * size.layers
        cpu += CPU_BF16_WORKING_BYTES * (storage == "bfloat16") + INT8_WEIGHTS_WORKING_BYTES * (storage == "int8-weights")
    disk = stored.get("disk", 0)
    speed = _speed({d: b for d, b in stored.items()}, budget, storage)
    option = Option(
        plan=name, description=description, dtype=storage, placement=placement, gpu_bytes_each=gpu_each,
        gpu_bytes=max(gpu_each) + CUDA_CONTEXT_BYTES if gpu_each else 0, cpu_bytes=int(cpu), disk_bytes=int(disk),
        tokens_per_second=speed, speed_class=_speed_class(speed), quality=QUALITY[storage],
    )
    over_gpu = any(b + CUDA_CONTEXT_BYTES > budget.gpu_bytes for b in gpu_each)
    over_disk = budget.disk_bytes is not None and disk > budget.disk_bytes
    option.fits = not over_gpu and option.cpu_bytes <= budget.cpu_bytes and not over_disk
    return option


def _redundant(option: Option) -> bool:
    """A split or an offload that moves nothing is the plain option under another name."""
    places = set(option.placement.values())
    if "offload" in option.plan:
        return not ({"disk"} if option.plan == "disk-offload" else {"cpu"}) & places
    return "multi-gpu" in option.plan and len(places) < 2


def _requirements(option: Option, budget: Budget) -> None:
    """Mark options this machine cannot run (a package or a GPU missing), saying what is missing."""
    if option.dtype in ("int8", "nf4"):
        if importlib.util.find_spec("bitsandbytes") is None:  # not imported: importing it prints warnings
            option.available, option.unavailable_reason = False, "needs bitsandbytes (pip install bitsandbytes)"
            return
        if not budget.gpus:
            option.available, option.unavailable_reason = False, "needs a CUDA GPU (bitsandbytes' 8/4-bit)"
    if option.plan == "bf16" and not budget.bf16:
        option.available, option.unavailable_reason = False, "needs a GPU with bf16 (compute capability 8.0+)"
    slow_here = {"bf16-cpu": NO_CPU_BF16, "int8-weights-cpu": NO_CPU_INT8_KERNEL}.get(option.plan)
    if slow_here and not budget.cpu_bf16:  # without the fused kernel: runs when asked, never picked by auto
        option.auto_skips = slow_here
        option.notes.append(slow_here)
    if option.dtype == "int8-dynamic" and importlib.util.find_spec("torch.ao.quantization") is None:
        option.available, option.unavailable_reason = False, "needs torch's dynamic quantization"


NO_CPU_BF16 = ("this CPU lacks AVX2 and FMA, which the fused bf16 kernel needs: its weights are widened in memory instead, "
               "so bf16 runs no faster than fp32 here and rounds; fp32-cpu keeps the text exact, int8-cpu is faster")
NO_CPU_INT8_KERNEL = ("this CPU lacks AVX2 and FMA, which the fused int8 kernel needs: its weights are widened in memory "
                      "instead, no faster than fp32; int8-cpu (torch's dynamic int8) is faster here, and rounds more")
TIERS = ("fp16", "bf16", "fp16-multi-gpu", "int8", "int8-multi-gpu", "nf4", "nf4-multi-gpu", "fp16-cpu-offload",
         "nf4-cpu-offload", "fp32-cpu", "bf16-cpu", "int8-weights-cpu", "int8-cpu", "disk-offload")


def plan(size: OPTSize | str, budget: Budget | None = None, *, context: int | None = None,
         batch: int = 1) -> list[Option]:
    """Every way to load `size` on `budget` (default: this machine), best first: the ones that fit and can
    run here, by tier (full precision on GPUs, then 8-bit, 4-bit, offload, CPU, disk), then the rest.
    `context` defaults to the model's whole context (2048 for OPT; a converted metaseq model's own)."""
    size = get_size(size) if isinstance(size, str) else size
    budget = budget or Budget.of_machine()
    context = size.max_positions if context is None else context
    if context < 1 or context > size.max_positions:
        raise ValueError(f"context must be between 1 and {size.max_positions} tokens (got {context}).")
    if batch < 1:
        raise ValueError(f"batch must be at least 1 (got {batch}).")
    gpus = [f"cuda:{i}" for i in range(budget.gpus)]
    args = (size, budget)  # then: storage, devices, context, batch
    options = []
    if gpus:
        options.append(_option("fp16", "fp16 on one GPU", *args, "float16", gpus[:1], context, batch))
        options.append(_option("bf16", "bf16 on one GPU", *args, "bfloat16", gpus[:1], context, batch))
        if len(gpus) > 1:
            options.append(_option("fp16-multi-gpu", f"fp16 split across {len(gpus)} GPUs (device_map)", *args,
                                   "float16", gpus, context, batch))
        options.append(_option("int8", "8-bit (bitsandbytes LLM.int8) on one GPU", *args, "int8", gpus[:1],
                               context, batch))
        if len(gpus) > 1:
            options.append(_option("int8-multi-gpu", f"8-bit split across {len(gpus)} GPUs", *args, "int8", gpus,
                                   context, batch))
        options.append(_option("nf4", "4-bit NF4 (bitsandbytes) on one GPU", *args, "nf4", gpus[:1], context, batch))
        if len(gpus) > 1:
            options.append(_option("nf4-multi-gpu", f"4-bit split across {len(gpus)} GPUs", *args, "nf4", gpus,
                                   context, batch))
        options.append(_option("fp16-cpu-offload", "fp16, the layers that do not fit the GPU(s) kept in RAM", *args,
                               "float16", gpus + ["cpu"], context, batch))
        options.append(_option("nf4-cpu-offload", "4-bit on the GPU(s), the rest in RAM (fp32, run on the CPU)",
                               *args, "nf4", gpus + ["cpu"], context, batch, offload_storage="float32"))
    options.append(_option("int8-cpu", "CPU only, torch's dynamic int8 (lm_head included)", *args, "int8-dynamic",
                           ["cpu"], context, batch))
    options.append(_option("fp32-cpu", "CPU only, fp32", *args, "float32", ["cpu"], context, batch))
    options.append(_option("bf16-cpu", "CPU only, bf16 weights, fp32 arithmetic", *args, "bfloat16", ["cpu"], context,
                           batch))
    options.append(_option("int8-weights-cpu", "CPU only, int8 weights (a scale per row), fp32 arithmetic", *args,
                           "int8-weights", ["cpu"], context, batch))
    options.append(_option("disk-offload", "what fits in GPU memory and RAM there, the rest read from disk", *args,
                           "float16" if gpus else "float32", gpus + ["cpu", "disk"], context, batch))
    options = [o for o in options if not _redundant(o)]
    for option in options:
        _requirements(option, budget)
        if option.plan == "nf4-cpu-offload":
            option.notes.append("bitsandbytes keeps offloaded layers unquantized in fp32 and runs them on the CPU")
    options.sort(key=lambda o: (not o.usable, TIERS.index(o.plan), -o.tokens_per_second))
    return options


def choose(options: list[Option], plan_name: str = "auto", *, model: str = "the model",
           budget: Budget | None = None) -> Option:
    """The option to load with: the best usable one for 'auto', else the named one, which must fit and
    be available here (if not, the error says why and names the next one that is)."""
    usable = [o for o in options if o.usable]
    if plan_name == "auto":
        if usable:
            return usable[0]
        smallest = min(options, key=lambda o: (o.gpu_bytes + o.cpu_bytes, o.disk_bytes))
        where = f" ({budget.describe()})" if budget else ""
        raise ModelLoadError(
            f"Nothing fits {model} on this budget{where}. The smallest option, {smallest.plan}, needs "
            f"{human_bytes(smallest.gpu_bytes)} of GPU memory, {human_bytes(smallest.cpu_bytes)} of RAM"
            f"{f' and {human_bytes(smallest.disk_bytes)} of disk' if smallest.disk_bytes else ''}. Use a smaller "
            "model, a shorter context, or a machine with more memory."
        )
    named = next((o for o in options if o.plan == plan_name), None)
    fallback = f" The best plan that works here is {usable[0].plan}." if usable else ""
    if named is None and plan_name in TIERS:
        why = ("needs a CUDA GPU, and torch sees none here" if "-cpu" not in plan_name or "offload" in plan_name
               else "is not needed: a simpler plan holds the whole model")
        if plan_name.endswith("-multi-gpu"):
            why = "needs several GPUs" + ("" if budget is None or budget.gpus < 2 else ", and the model fits on one")
        elif plan_name.endswith("offload"):
            why = "has nothing to offload here (the model fits without it), or needs a GPU"
        raise ModelLoadError(f"Plan {plan_name} cannot be used for {model}: it {why}.{fallback}")
    if named is None:
        raise ModelLoadError(f"'{plan_name}' is not a plan. Plans: {', '.join(TIERS)}.")
    if named.fits and named.available:  # what auto skips, a request by name may still have
        return named
    why = named.unavailable_reason if not named.available else (
        f"does not fit this budget (it needs {human_bytes(named.cpu_bytes)} of RAM{_and_gpu(named)})")
    raise ModelLoadError(f"Plan {plan_name} cannot be used for {model}: it {why}.{fallback}")
