"""Measured memory: a model's weight tensors, the peak while a block runs, freed memory given back."""

from __future__ import annotations

import ctypes
import gc

import torch

from ..environment import resident_memory_bytes


def weight_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor holding the model's weights, once: parameters, buffers, and torch's packed int8
    weights (which are neither)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    seen, out = set(), []
    candidates = list(model.parameters()) + list(model.buffers())
    for module in model.modules():
        if isinstance(module, DynamicInt8Linear):
            candidates += [t for t in (module.weight(), module.bias()) if t is not None]
    for tensor in candidates:
        key = id(tensor) if tensor.device.type == "meta" else tensor.data_ptr()  # offloaded: no memory, no address
        if key not in seen:
            seen.add(key)
            out.append(tensor)
    return out


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in weight_tensors(model))


def _memory_now(device: str) -> int:
    return torch.cuda.memory_allocated() if device.startswith("cuda") else resident_memory_bytes()


class PeakMemory:
    """The one peak measurement: while the block runs, the most memory allocated on a CUDA `device` (its
    peak counter reset on entry), elsewhere this process's peak resident memory (`PeakResidentMemory`).
    `baseline` is the reading at entry, `bytes` the peak, `added` the difference."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.baseline = self.bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self._resident = PeakResidentMemory().__enter__()
            self.baseline = self._resident.peak
        return self

    def __exit__(self, *exc) -> bool:
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._resident.__exit__(*exc)
            self.bytes = self._resident.peak
        return False

    @property
    def added(self) -> int:
        return self.bytes - self.baseline


def _release_freed_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:  # glibc keeps freed small blocks in its arenas; hand them back to the OS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _high_water_mark() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakResidentMemory:
    """This process's peak resident memory while the block runs: Linux's high-water mark (VmHWM), reset
    on entry. No sampling thread: one would compete for the GIL with what is being measured (it slowed
    decoding several-fold in a notebook kernel). Elsewhere, the larger of the readings at entry and exit."""

    def __enter__(self) -> PeakResidentMemory:
        self.peak = resident_memory_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
            self._hwm = True
        except OSError:
            self._hwm = False
        return self

    def __exit__(self, *exc) -> bool:
        mark = _high_water_mark() if self._hwm else None
        self.peak = max(self.peak, resident_memory_bytes(), mark or 0)
        return False
