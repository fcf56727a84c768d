"""Original metaseq OPT checkpoints read and converted without metaseq: `helpers.checkpoints`' public names."""

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
