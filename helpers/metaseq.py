"""Read original metaseq OPT checkpoints (single files, FSDP-flattened parts, model-parallel parts) without
metaseq, Megatron-LM or fairscale, and convert them to a Hugging Face folder.

Written by hand because no library reads these formats any more: metaseq's own tools need the
metaseq/Megatron/fairscale stack (which no longer installs) and several GPUs; this runs on a CPU.
The work is done by `helpers.checkpoints`, one module per stage; this module gathers its public names.
"""

from .checkpoints.architecture import (
    architecture_from_cfg,
    architecture_from_size,
    architecture_from_weights,
    find_size_by_shape,
    resolve_architecture,
)
from .checkpoints.convert import ConversionReport, compare_models, convert
from .checkpoints.layouts import Architecture
from .checkpoints.merge import common_dtype
from .checkpoints.parts import Part, find_parts, read_part
from .checkpoints.safe_load import load_checkpoint_file

__all__ = [
    "Architecture", "ConversionReport", "Part", "architecture_from_cfg", "architecture_from_size",
    "architecture_from_weights", "common_dtype", "compare_models", "convert", "find_parts", "find_size_by_shape",
    "load_checkpoint_file", "read_part", "resolve_architecture",
]
