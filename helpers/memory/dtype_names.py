"""The dtype table's torch-free half: storage names, aliases, compute dtypes by name, bytes per element."""

from __future__ import annotations

# Each way of storing weights -> (the dtype the model computes and caches in, by torch's name, bytes per stored
# element of the quantized matrices). bitsandbytes' int8/nf4/fp4 compute in fp16; torch's dynamic int8
# ("int8-dynamic", CPU only) in fp32, as does the CPU engine's weight-only int8 ("int8-weights", a scale per row).
STORAGE: dict[str, tuple[str, float]] = {
    "float32": ("float32", 4), "float16": ("float16", 2), "bfloat16": ("bfloat16", 2),
    "int8": ("float16", 1), "nf4": ("float16", 0.5), "fp4": ("float16", 0.5),
    "int8-dynamic": ("float32", 1), "int8-weights": ("float32", 1),
}
FLOAT_DTYPES = ("float32", "float16", "bfloat16")  # what a model can be loaded in without quantizing
DTYPE_CHOICES = ("auto", *FLOAT_DTYPES)  # what --dtype takes: 'auto' is fp16 on a GPU, fp32 on the CPU
DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16",
                 "8bit": "int8", "4bit": "nf4"}
BYTES_PER_ELEMENT = {name: per for name, (_, per) in STORAGE.items()}


def canonical_dtype_name(name: str) -> str:
    """The table's name for `name`, whatever its case or alias ('FP16', 'half' -> 'float16'); unknown names come back
    lower-cased, for the caller to refuse. Every reader of a dtype name goes through here."""
    lowered = name.strip().lower()
    return DTYPE_ALIASES.get(lowered, lowered)
