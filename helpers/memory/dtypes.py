"""The one dtype table with torch: its torch dtypes, and names and aliases resolved to them."""

from __future__ import annotations

import torch

from .dtype_names import FLOAT_DTYPES, STORAGE, canonical_dtype_name

# The table of dtype_names with torch's dtypes: storage -> (the torch dtype it computes in, bytes per element).
DTYPES: dict[str, tuple[torch.dtype, float]] = {name: (getattr(torch, compute), per)
                                                for name, (compute, per) in STORAGE.items()}


def dtype_name(dtype: str | torch.dtype) -> str:
    """'float16' for torch.float16, 'fp16' or 'half'; quantized names pass through."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    name = canonical_dtype_name(dtype)
    if name not in DTYPES:
        raise ValueError(f"Unknown dtype '{dtype}'. Use one of: {', '.join(DTYPES)}.")
    return name


def torch_dtype(storage: str | torch.dtype) -> torch.dtype:
    """The torch dtype a model stored as `storage` computes in (float16 for bitsandbytes' 8/4-bit)."""
    return storage if isinstance(storage, torch.dtype) else DTYPES[dtype_name(storage)][0]


def compute_bytes(storage: str | torch.dtype) -> int:
    """Bytes per element of the activations and the key/value cache of a model stored as `storage`."""
    return torch_dtype(storage).itemsize


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    """'auto' is fp16 on a GPU and fp32 on the CPU (CPU fp16 matrix products are slow and lossy)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = canonical_dtype_name(dtype)
    if name == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    if name not in FLOAT_DTYPES:
        raise ValueError(f"Unknown dtype '{dtype}'. Use 'auto', {', '.join(map(repr, FLOAT_DTYPES))}.")
    return torch_dtype(name)
