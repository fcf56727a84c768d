"""Device names, checked before anything loads ('auto' is this machine's best)."""

from __future__ import annotations

import torch

from ..environment import default_device
from ..errors import ModelLoadError

DEVICE_HINT = "Use 'auto', 'cpu', 'cuda', 'cuda:1' (a GPU by number) or 'mps' (Apple silicon)."


def resolve_device(device: str) -> str:
    """'auto' as this machine's best device; any other name checked before anything loads."""
    if not isinstance(device, str):
        raise ModelLoadError(f"device must be a name such as 'cpu' or 'cuda', not {type(device).__name__}. {DEVICE_HINT}")
    if device == "auto":
        return default_device()
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        kind = None
    if kind not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"Unknown device '{device}'. {DEVICE_HINT}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"Device '{device}' was asked for, but this machine has no Apple GPU that torch can "
                             "use. Use device='cpu' or 'auto'.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"Device '{device}' was asked for, but this machine has no CUDA GPU that torch can see "
            f"(torch {torch.__version__}). Use device='cpu', or on Colab pick Runtime > Change runtime type > GPU."
        )
    return device
