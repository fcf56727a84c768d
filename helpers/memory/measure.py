"""Measured memory: this process's figures, a model's weight tensors, the peak while a block runs, freeing."""

from __future__ import annotations

import ctypes
import gc
import threading

import torch

from ..environment import resident_memory_bytes

# ------------------------------------------------------------------------------------------ this process's figures


def proc_status() -> dict[str, int]:
    """This process's memory figures from /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile ...), in bytes
    (empty where there is no /proc)."""
    try:
        with open("/proc/self/status") as handle:
            lines = [line.split() for line in handle if line.startswith(("Vm", "Rss"))]
    except OSError:
        return {}
    return {parts[0].rstrip(":"): int(parts[1]) * 1024 for parts in lines if len(parts) >= 2 and parts[1].isdigit()}


class MemorySampler:
    """Peaks of resident memory by kind, sampled every 20 ms while the block runs: pages of memory-mapped
    weight files count in resident memory (reclaimable), anonymous memory is what the process holds. For
    loading only: the thread competes for the GIL with what runs (see `PeakResidentMemory`)."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")

    def __enter__(self) -> MemorySampler:
        self.peaks = dict.fromkeys(self.FIELDS, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            now = proc_status()
            for key in self.FIELDS:
                self.peaks[key] = max(self.peaks[key], now.get(key, 0))
            if self._stop.wait(0.02):
                return

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        self._thread.join()
        return False


# ------------------------------------------------------------------------------------------ a model's weights and peaks


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


def model_weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in weight_tensors(model))


def memory_now(device: str) -> int:
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


def release_freed_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:  # glibc keeps freed small blocks in its arenas; hand them back to the OS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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
        mark = proc_status().get("VmHWM", 0) if self._hwm else 0
        self.peak = max(self.peak, resident_memory_bytes(), mark)
        return False
