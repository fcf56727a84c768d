"""Where we run: Colab or not, the GPUs and their memory, the RAM, and which OPT sizes fit."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass, field

import psutil
import torch

from .units import human_bytes


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    capability: tuple[int, int]

    @property
    def supports_bf16(self) -> bool:
        return self.capability >= (8, 0)


@dataclass(frozen=True)
class Environment:
    on_colab: bool
    python: str
    torch: str
    transformers: str
    cuda: str | None
    cpu_count: int
    ram_total_bytes: int
    ram_available_bytes: int
    gpus: tuple[GPU, ...] = field(default_factory=tuple)
    cpu_bf16: bool = False  # bf16 weights decode faster than fp32 on this CPU: see cpu_supports_bf16

    def as_dict(self) -> dict:
        return asdict(self)


def on_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def enable_colab_widgets() -> bool:
    """On Colab with ipywidgets 8, switch on Colab's custom widget manager, without which ipywidgets 8's
    widgets do not show there (googlecolab/colabtools#3020); ipywidgets 7.7, which Colab ships, needs
    nothing. Returns whether it switched it on."""
    import ipywidgets
    from packaging.version import Version

    if not on_colab() or Version(ipywidgets.__version__).major < 8:
        return False
    from google.colab import output

    output.enable_custom_widget_manager()
    return True


FUSED_KERNEL_FLAGS = ("avx2", "fma")  # /proc/cpuinfo's flags the int8/bf16 weight kernel is written for


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            line = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def cpu_supports_bf16() -> bool:
    """bf16 weights decode faster than fp32 on this CPU: it has the instructions (AVX2, FMA) of the fused kernel
    that widens each bf16 weight to fp32 in registers, so a decode reads half fp32's bytes. Elsewhere the
    weights are widened a block at a time in memory, no faster than fp32."""
    return set(FUSED_KERNEL_FLAGS) <= cpu_flags()



def detect_gpus() -> tuple[GPU, ...]:
    if not torch.cuda.is_available():
        return ()
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        gpus.append(GPU(i, props.name, total, free, (props.major, props.minor)))
    return tuple(gpus)


def detect() -> Environment:
    """A snapshot of this machine."""
    import transformers

    mem = psutil.virtual_memory()
    return Environment(
        on_colab=on_colab(),
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        cuda=torch.version.cuda if torch.cuda.is_available() else None,
        cpu_count=os.cpu_count() or 1,
        ram_total_bytes=mem.total,
        ram_available_bytes=mem.available,
        gpus=detect_gpus(),
        cpu_bf16=cpu_supports_bf16(),
    )


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resident_memory_bytes() -> int:
    """This process's resident set size."""
    return psutil.Process().memory_info().rss


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory that new tensors on `device` can still take: free GPU memory (plus what torch's allocator
    holds unused) on CUDA, available RAM on the CPU; None where it cannot be known (mps)."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        return psutil.virtual_memory().available
    return None


def report(env: Environment | None = None) -> str:
    """A short human-readable report of this machine."""
    env = env or detect()
    lines = [
        f"Running on: {'Google Colab' if env.on_colab else platform.node() or 'this machine'}",
        f"Python {env.python}, torch {env.torch}, transformers {env.transformers}",
        f"CPU: {env.cpu_count} cores, RAM: {human_bytes(env.ram_total_bytes)} "
        f"({human_bytes(env.ram_available_bytes)} available)",
    ]
    if env.gpus:
        for gpu in env.gpus:
            lines.append(
                f"GPU {gpu.index}: {gpu.name}, {human_bytes(gpu.total_bytes)} "
                f"({human_bytes(gpu.free_bytes)} free), compute capability {gpu.capability[0]}.{gpu.capability[1]}"
            )
    else:
        lines.append("GPU: none (models run on the CPU in float32; only the small sizes are practical)")
    return "\n".join(lines)
