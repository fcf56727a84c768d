"""Giving back memory-mapped pages once read, and freed memory after each FSDP instance (Linux)."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys

import torch

_DONTNEED = 4  # MADV_DONTNEED: a private, unwritten file mapping reads the pages from the file again if needed
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform.startswith("linux") else None


def release(tensor: torch.Tensor) -> None:
    """Drop the resident pages under `tensor` (a view of a file mapped by `torch.load(mmap=True)`), so that
    reading a 328 GB checkpoint once, piece by piece, does not leave it all counted in this process's memory.
    Elsewhere than on Linux it does nothing (the pages stay until the file is unmapped)."""
    if _libc is None or tensor.numel() == 0:
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    start -= start % mmap.PAGESIZE
    _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _DONTNEED)


def trim() -> None:
    """Hand the memory freed by the last FSDP instance back to the system (glibc keeps freed blocks of
    the sizes it saw for reuse, which would otherwise hold another layer or two)."""
    trimmer = getattr(_libc, "malloc_trim", None) if _libc is not None else None
    if trimmer is not None:
        trimmer(0)
