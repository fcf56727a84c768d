"""int8-weights-cpu's fused matrix-vector kernel (int8_matvec.cpp): built once per machine, or why it is not."""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from ...environment import cpu_flags

SOURCE = Path(__file__).with_name("int8_matvec.cpp")
NEEDED_FLAGS = ("avx2", "fma")
COMPILER_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp"]  # OpenMP: at::parallel_for is serial without it
FUSED_MAX_ROWS = 8  # up to 8 input rows the kernel wins (measured: even at 8 to 12); longer prompts take the GEMM path


@dataclass(frozen=True)
class Int8Kernel:
    """The built kernel, or why there is none (the int8 layers then dequantize blocks of rows and use torch's
    fp32 matrix product: the same values, at about fp32's speed or below)."""

    module: ModuleType | None
    why_not: str = ""

    def linear(self, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """(x @ q.T) * scale + bias for x of shape (rows, in_features), fp32."""
        return self.module.int8_linear(x, q, scale, torch.empty(0) if bias is None else bias)


def build_directory() -> Path:
    """~/.cache/opt-notebooks/int8-kernel/<digest> (or under $XDG_CACHE_HOME): one build per source, torch and
    Python version, so an upgrade builds again instead of loading a stale library."""
    identity = f"{torch.__version__} {sys.version} {COMPILER_FLAGS}".encode()
    digest = hashlib.sha256(SOURCE.read_bytes() + identity).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "opt-notebooks" / "int8-kernel" / digest


@functools.lru_cache(maxsize=1)
def int8_kernel() -> Int8Kernel:
    """The kernel, compiled on first use (about 30 s, once per machine), with a warning where it cannot be."""
    kernel = _built()
    if kernel.module is None:
        warnings.warn(f"int8-weights-cpu: the fused int8 kernel is not in use ({kernel.why_not}); the int8 "
                      "layers dequantize their weights for each product instead: the same text, slower.",
                      UserWarning, stacklevel=2)
    return kernel


def _built() -> Int8Kernel:
    missing = [flag for flag in NEEDED_FLAGS if flag not in cpu_flags()]
    if missing:
        return Int8Kernel(None, f"this CPU lacks {' and '.join(missing)}")
    # torch builds C++ extensions with a compiler and ninja; both are checked here so the message names what to install
    from torch.utils import cpp_extension

    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError:
        return Int8Kernel(None, "ninja is not installed: `pip install ninja`, with a C++ compiler, builds it")
    folder = build_directory()
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.glob("*.so")):
        print("Building the int8 kernel for this CPU (once; about 30 s) ...", file=sys.stderr, flush=True)
    try:
        module = cpp_extension.load(name="opt_notebooks_int8_matvec", sources=[str(SOURCE)],
                                    extra_cflags=COMPILER_FLAGS, extra_ldflags=["-fopenmp"], build_directory=str(folder))
    except Exception as exc:  # a missing or failing compiler raises several types (OSError, CalledProcessError, ...)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Int8Kernel(None, f"it could not be built: {first_line[:200]}. A C++ compiler (g++) builds it")
    return Int8Kernel(module)
