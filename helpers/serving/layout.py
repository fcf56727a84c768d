"""vLLM's parallel layout for an OPT size: tensor parallel in a node, pipeline across nodes, memory per GPU."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..memory.bytes import GiB, kv_cache_bytes_per_token, weight_bytes
from ..opt.sizes import OPTSize, parameter_breakdown
from ..units import human_bytes

# vLLM's --gpu-memory-utilization default: the share of each GPU it takes for weights, activations and its cache.
GPU_MEMORY_UTILIZATION = 0.9
# What vLLM needs on each GPU beside weights and cache: activations of one scheduled batch, the sampler, NCCL
# buffers and CUDA graphs. vLLM measures this at start-up; 1.5 GiB is what an OPT-sized model's profile run
# takes at --max-num-batched-tokens 2048 (an allowance, not a measurement of this machine).
OVERHEAD_BYTES = int(1.5 * GiB)
MAX_GPUS_PER_NODE = 16


@dataclass(frozen=True)
class Layout:
    """How one model is split over GPUs for vLLM, and what each GPU holds."""

    tensor_parallel_size: int  # GPUs per node sharing every layer (must divide the head count)
    pipeline_parallel_size: int  # nodes, each holding a contiguous share of the layers
    gpu_memory: int  # bytes per GPU
    context: int
    concurrency: int  # sequences of `context` tokens planned for at once
    weight_bytes_per_gpu: int
    kv_cache_bytes_per_gpu: int
    gpu_bytes_per_gpu: int  # weights + cache for `concurrency` sequences + overhead
    max_concurrency: int  # sequences of `context` tokens the remaining memory holds
    fits: bool

    def as_dict(self) -> dict:
        return asdict(self)


def tensor_parallel_choices(size: OPTSize, limit: int = MAX_GPUS_PER_NODE) -> list[int]:
    """GPU counts per node that split the attention heads evenly (vLLM's requirement)."""
    return [n for n in range(1, limit + 1) if size.heads % n == 0]


def check_tensor_parallel(size: OPTSize, gpus: int) -> None:
    if gpus < 1 or size.heads % gpus:
        choices = ", ".join(map(str, tensor_parallel_choices(size)))
        raise ValueError(f"{size.name} has {size.heads} attention heads: vLLM splits them evenly over a node's GPUs, "
                         f"so {gpus} GPUs per node cannot work. Use {choices} GPUs per node (--gpus), leaving the "
                         "rest idle.")


def layout(size: OPTSize, gpus: int, nodes: int, gpu_memory: int, context: int, concurrency: int,
           dtype: str = "float16") -> Layout:
    """The layout of `size` over `nodes` x `gpus`, and whether it fits `gpu_memory` per GPU."""
    check_tensor_parallel(size, gpus)
    if nodes < 1 or nodes > size.layers:
        raise ValueError(f"{size.name} has {size.layers} layers: pipeline parallel over {nodes} nodes cannot work "
                         f"(use 1 to {size.layers}).")
    parts = parameter_breakdown(size)
    total = weight_bytes(size, dtype)
    shared = total * (parts.embeddings + parts.projections) // max(1, parts.total)  # token/position tables
    per_layer = (total - shared) / size.layers
    layers_per_stage = math.ceil(size.layers / nodes)
    # the first stage holds the token table, the last its tied copy as the output layer: one table each
    weights = int((per_layer * layers_per_stage + shared) / gpus)
    kv_per_sequence = kv_cache_bytes_per_token(size, dtype) * context * layers_per_stage // size.layers // gpus
    usable = int(gpu_memory * GPU_MEMORY_UTILIZATION)
    room = usable - weights - OVERHEAD_BYTES
    cache = kv_per_sequence * concurrency
    return Layout(gpus, nodes, gpu_memory, context, concurrency, weights, cache, weights + cache + OVERHEAD_BYTES,
                  max(0, room // kv_per_sequence), room >= cache)


def smallest_layout(size: OPTSize, nodes: int, gpu_memory: int, context: int, concurrency: int,
                    dtype: str = "float16", limit: int = MAX_GPUS_PER_NODE) -> Layout | None:
    """The fewest GPUs per node (dividing the heads, `limit` at most) on which `size` fits; None if none does."""
    for gpus in tensor_parallel_choices(size, limit):
        plan = layout(size, gpus, nodes, gpu_memory, context, concurrency, dtype)
        if plan.fits:
            return plan
    return None


def refusal(size: OPTSize, plan: Layout, dtype: str = "float16") -> str:
    """Why a layout does not fit, and what would."""
    want = (f"{size.name} on {plan.pipeline_parallel_size} node(s) x {plan.tensor_parallel_size} GPU(s) of "
            f"{human_bytes(plan.gpu_memory)} needs {human_bytes(plan.gpu_bytes_per_gpu)} per GPU "
            f"({human_bytes(plan.weight_bytes_per_gpu)} weights, {human_bytes(plan.kv_cache_bytes_per_gpu)} cache for "
            f"{plan.concurrency} x {plan.context} tokens) of the {int(GPU_MEMORY_UTILIZATION * 100)}% vLLM uses")
    options = []
    for nodes in (plan.pipeline_parallel_size, plan.pipeline_parallel_size + 1, plan.pipeline_parallel_size * 2):
        other = smallest_layout(size, nodes, plan.gpu_memory, plan.context, plan.concurrency, dtype)
        if other is not None:
            options.append(f"--nodes {nodes} --gpus {other.tensor_parallel_size}")
    if plan.max_concurrency:
        options.append(f"--concurrency {plan.max_concurrency}")
    if plan.context > 512:
        options.append("a shorter --context")
    return f"{want}: it does not fit. What would: {'; or '.join(dict.fromkeys(options)) or 'larger GPUs'}."
