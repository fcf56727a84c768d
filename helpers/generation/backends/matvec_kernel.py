"""The CPU's fused matrix-vector kernels for int8 and bf16 weights (weight_matvec.cpp): built once per machine."""

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
import torch.nn.functional as F

from ...environment import FUSED_KERNEL_FLAGS, cpu_flags

SOURCE = Path(__file__).with_name("weight_matvec.cpp")
NEEDED_FLAGS = FUSED_KERNEL_FLAGS
COMPILER_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp"]  # OpenMP: at::parallel_for is serial without it
FUSED_MAX_ROWS = 8  # up to 8 input rows the kernel wins (measured: even at 8 to 12); longer prompts take the GEMM path
_ROWS_PER_BLOCK = 2048  # rows widened at a time without the kernel: a block of fp32 stays small (lm_head: 50272 rows)


@dataclass(frozen=True)
class MatvecKernel:
    """The built kernels, or why there are none (the layers then widen blocks of rows to fp32 and use torch's
    matrix product: the same values, at about fp32's speed or below)."""

    module: ModuleType | None
    why_not: str = ""

    def int8_linear(self, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
        """(x @ q.T) * scale + bias for x of shape (rows, in_features), fp32, q int8."""
        return self.module.int8_linear(x, q, scale, torch.empty(0) if bias is None else bias)

    def bf16_linear(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x @ w.T + bias for x of shape (rows, in_features), fp32, w bf16: fp32 arithmetic."""
        return self.module.bf16_linear(x, w, torch.empty(0) if bias is None else bias)


def fused_product(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """(x @ weight.T) * scale + bias for x (rows, in_features) fp32 and an int8 (with its scale) or bf16 weight, fp32
    arithmetic: the fused kernel for up to FUSED_MAX_ROWS rows, else `widened_product`."""
    kernel = matvec_kernel()
    if kernel.module is None or x.shape[0] > FUSED_MAX_ROWS:
        return widened_product(x, weight, scale, bias)
    if weight.dtype == torch.int8:
        return kernel.int8_linear(x, weight, scale, bias)
    return kernel.bf16_linear(x, weight, bias)


def widened_product(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """The kernels' product, (x @ weight.T) * scale + bias with x fp32, by torch's fp32 matrix product, a block of
    weight rows widened to fp32 at a time: for long prompts, where a matrix product beats the kernels, and for
    CPUs they cannot be built for. No fp32 copy of the whole weight is made."""
    out = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32)
    for start in range(0, weight.shape[0], _ROWS_PER_BLOCK):
        end = min(start + _ROWS_PER_BLOCK, weight.shape[0])
        out[:, start:end] = F.linear(x, weight[start:end].float())
    if scale is not None:
        out.mul_(scale)
    if bias is not None:
        out.add_(bias)
    return out


def build_directory() -> Path:
    """~/.cache/opt-notebooks/matvec-kernel/<digest> (or under $XDG_CACHE_HOME): one build per source, torch and
    Python version, so an upgrade builds again instead of loading a stale library."""
    identity = f"{torch.__version__} {sys.version} {COMPILER_FLAGS}".encode()
    digest = hashlib.sha256(SOURCE.read_bytes() + identity).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "opt-notebooks" / "matvec-kernel" / digest


@functools.lru_cache(maxsize=1)
def matvec_kernel() -> MatvecKernel:
    """The kernels, compiled on first use (about 30 s, once per machine), with a warning where they cannot be."""
    kernel = _built()
    if kernel.module is None:
        warnings.warn(f"int8-weights-cpu and bf16-cpu: the fused kernel for their weights is not in use "
                      f"({kernel.why_not}); their layers widen the weights to fp32 for each product instead: "
                      "the same text, slower.", UserWarning, stacklevel=2)
    return kernel


def _built() -> MatvecKernel:
    missing = [flag for flag in NEEDED_FLAGS if flag not in cpu_flags()]
    if missing:
        return MatvecKernel(None, f"this CPU lacks {' and '.join(missing)}")
    # torch builds C++ extensions with a compiler and ninja; both are checked here so the message names what to install
    from torch.utils import cpp_extension

    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError:
        return MatvecKernel(None, "ninja is not installed: `pip install ninja`, with a C++ compiler, builds it")
    folder = build_directory()
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.glob("*.so")):
        print("Building the int8/bf16 kernel for this CPU (once; about 30 s) ...", file=sys.stderr, flush=True)
    try:
        module = cpp_extension.load(name="opt_notebooks_weight_matvec", sources=[str(SOURCE)],
                                    extra_cflags=COMPILER_FLAGS, extra_ldflags=["-fopenmp"], build_directory=str(folder))
    except Exception as exc:  # a missing or failing compiler raises several types (OSError, CalledProcessError, ...)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return MatvecKernel(None, f"it could not be built: {first_line[:200]}. A C++ compiler (g++) builds it")
    return MatvecKernel(module)
