"""Memory bandwidth measured now, and the bytes one decode step reads (the roofline)."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from transformers import OPTForCausalLM

from ..memory.bytes import kv_cache_bytes_per_token
from ..memory.measure import weight_tensors
from ..opt.sizes import size_from_config

# ------------------------------------------------------------------------------------------ bandwidth


def _median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    """The median, like the decode timings it is compared with: a shared machine's occasional fast or
    slow pass moves neither."""
    fn()
    wait_for_device(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        wait_for_device(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_bandwidth(device: str | torch.device = "cpu", buffer_bytes: int = 1 << 30,
                      tensors: list[torch.Tensor] | None = None) -> dict:
    """Memory bandwidth, measured now. On a GPU: a device-to-device copy of `buffer_bytes` (reads and
    writes counted) and a sum over it (reads alone, as a decode step reads its weights). On the CPU:
    reading `tensors` once (a model's weights: the very bytes a decode step reads, where they live) or a
    fresh buffer, with torch's sum and with numpy's matrix-vector product;
    the faster is the roofline's bandwidth (a shared machine's bandwidth to a fresh buffer drifts by tens
    of percent, and caches may flatter it, so the weights themselves make the steadier yardstick)."""
    device = torch.device(device)
    if device.type != "cpu" or tensors is None:
        n = buffer_bytes // 4
        src = torch.rand(n, dtype=torch.float32, device=device)  # random: no page can be deduplicated
        dst = torch.empty_like(src)
        out = {"buffer_bytes": n * 4, "copy": 2 * n * 4 / _median_seconds(lambda: dst.copy_(src), device)}
        del dst
        tensors = [src.view(-1, 4096)]
    else:
        out = {"buffer_bytes": sum(t.numel() * t.element_size() for t in tensors)}
    read = sum(t.numel() * t.element_size() for t in tensors)  # a sum reads its input once and writes nothing
    out["read_sum"] = read / _median_seconds(lambda: [t.sum() for t in tensors], device)
    if device.type == "cpu":
        matrices = [t.detach().numpy() for t in tensors if t.dim() == 2 and t.dtype == torch.float32]
        vectors = {m.shape[1]: np.ones(m.shape[1], dtype=np.float32) for m in matrices}
        if matrices:
            gemv_bytes = sum(m.nbytes for m in matrices)
            out["read_gemv"] = gemv_bytes / _median_seconds(lambda: [m @ vectors[m.shape[1]] for m in matrices],
                                                            device)
    out["bytes_per_second"] = max(v for k, v in out.items() if k != "buffer_bytes")
    out["used"] = max((k for k in out if k not in ("buffer_bytes", "bytes_per_second")), key=out.get)
    gc.collect()
    return out


def _lookup_tables(model: OPTForCausalLM) -> list[torch.Tensor]:
    """The tables a decode step reads one row of: positions, and the token table unless lm_head reads it whole."""
    positions = model.model.decoder.embed_positions.weight
    tokens = model.get_input_embeddings().weight
    tied = getattr(model.lm_head, "weight", None) is tokens
    return [positions] + ([] if tied else [tokens])


def tensors_read_whole(model: OPTForCausalLM) -> list[torch.Tensor]:
    """The weight tensors a decode step reads whole (tied ones once): the bandwidth yardstick."""
    lookups = _lookup_tables(model)
    return [t.detach() for t in weight_tensors(model) if not any(t is table for table in lookups)]


def _weight_bytes_read(model: OPTForCausalLM) -> int:
    """Bytes of weights one decode step reads: the tensors it reads whole, and one row of each lookup table."""
    rows = sum(t.shape[1] * t.element_size() for t in _lookup_tables(model))
    return rows + sum(t.numel() * t.element_size() for t in tensors_read_whole(model))


def bytes_per_decode_step(model: OPTForCausalLM, context: float, batch: int) -> int:
    """What one decode step reads: the weights once, plus the key/value cache of `context` tokens for each
    of the `batch` sequences."""
    size = size_from_config(model.config)
    return int(_weight_bytes_read(model) + kv_cache_bytes_per_token(size, model.dtype) * context * batch)


# ------------------------------------------------------------------------------------------ methods


def wait_for_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
