"""The one dtype table: names, aliases, torch dtypes and bytes per element."""

from __future__ import annotations

import torch

# The one dtype table: each way of storing weights -> (the torch dtype the model computes and caches in,
# bytes per stored element of the quantized matrices). bitsandbytes' int8/nf4/fp4 compute in fp16; torch's
# dynamic int8 ("int8-dynamic", CPU only) in fp32.
DTYPES: dict[str, tuple[torch.dtype, float]] = {
    "float32": (torch.float32, 4), "float16": (torch.float16, 2), "bfloat16": (torch.bfloat16, 2),
    "int8": (torch.float16, 1), "nf4": (torch.float16, 0.5), "fp4": (torch.float16, 0.5),
    "int8-dynamic": (torch.float32, 1),
}
FLOAT_DTYPES = ("float32", "float16", "bfloat16")  # what a model can be loaded in without quantizing
DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16",
                 "8bit": "int8", "4bit": "nf4"}
BYTES_PER_ELEMENT = {name: per for name, (_, per) in DTYPES.items()}


def dtype_name(dtype: str | torch.dtype) -> str:
    """'float16' for torch.float16, 'fp16' or 'half'; quantized names pass through."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    name = DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
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
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    name = DTYPE_ALIASES.get(dtype, dtype)
    if name not in FLOAT_DTYPES:
        raise ValueError(f"Unknown dtype '{dtype}'. Use 'auto', {', '.join(map(repr, FLOAT_DTYPES))}.")
    return torch_dtype(name)
