"""A model folder's safetensors weights, read a block of rows at a time, so a large file is never resident whole."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class SafetensorsRows:
    """Where each tensor of a folder's safetensors files is, and its rows on request. Each read opens the file
    anew: safetensors maps a file while it is open, and every page read through the map stays resident
    (counted against the process) until it closes, so reading a whole fp32 model through one open file costs
    its full size however little is kept."""

    def __init__(self, files: dict[str, Path]):
        self.files = files  # tensor name -> the file that holds it

    @classmethod
    def of_folder(cls, folder: str | Path) -> SafetensorsRows | None:
        """The folder's weights (sharded with an index, or one file); None where it has no safetensors."""
        folder = Path(folder)
        if (folder / INDEX).is_file():
            weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
            return cls({name: folder / file for name, file in weight_map.items()})
        if (folder / SINGLE).is_file():
            with safe_open(folder / SINGLE, "pt") as weights:
                return cls(dict.fromkeys(weights.keys(), folder / SINGLE))
        return None

    def name_of(self, parameter: str) -> str | None:
        """The stored name of a model parameter: checkpoints name OPT's weights with or without `model.`."""
        bare = parameter.removeprefix("model.")
        return next((name for name in (parameter, bare, f"model.{bare}") if name in self.files), None)

    def reader(self, parameter: str) -> Callable[[int, int], torch.Tensor] | None:
        """A reader of the stored rows of a model parameter; None where the files do not hold it."""
        name = self.name_of(parameter)
        return None if name is None else functools.partial(self.rows, name)

    def rows(self, name: str, start: int, end: int) -> torch.Tensor:
        """Rows start:end of the stored tensor, in its stored dtype, copied out of the file."""
        with safe_open(self.files[name], "pt") as weights:
            return weights.get_slice(name)[start:end]  # a copy: it outlives the file's map
