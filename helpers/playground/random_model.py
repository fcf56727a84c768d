"""The picker's "random weights (to try the app)": a small OPT with random weights, built here in seconds."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..opt.random_weights import save_random_model
from ..opt.sizes import OPTSize

RANDOM = "random-weights"
RANDOM_LABEL = "random weights (to try the app)"
# OPT-125m's vocabulary, context and layout, narrower and shallower: 38M parameters, about 150 MB in float32.
SIZE = OPTSize(name="opt-random", layers=4, heads=8, d_model=512, ffn=2048, word_embed_proj_dim=512,
               pre_layer_norm=True)


def random_folder(building: Callable[[], None] | None = None) -> Path:
    """The random-weight model's folder under the user's cache, built on first use (`building()` is called
    first); written under a temporary name and renamed, so a failed build leaves nothing half-written."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "opt-notebooks"
    folder = cache / "random-weights-opt"
    if (folder / "config.json").is_file():
        return folder
    if building is not None:
        building()
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix="random-weights-opt.partial-", dir=cache))
    try:
        save_random_model(SIZE, partial, dtype=torch.float32)
        partial.rename(folder)
    except FileExistsError:  # another kernel built it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder
