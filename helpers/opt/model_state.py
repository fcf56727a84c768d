"""Facts about a model object: where its inputs go, and whether it was unloaded."""

from __future__ import annotations

import torch

from ..errors import ModelUnloadedError

_UNLOADED = "_helpers_unloaded"  # the attribute `unload` sets on a model whose tensors it dropped


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's inputs go: the token table's device, or, where accelerate offloaded it (to disk:
    the tensor is on `meta`), the device its hook runs it on."""
    embeddings = model.get_input_embeddings()
    execution = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
    if execution is not None and embeddings.weight.device.type == "meta":
        return torch.device(execution)
    return embeddings.weight.device


def mark_unloaded(model: torch.nn.Module) -> None:
    """Mark a model whose tensors were dropped: a later use raises ModelUnloadedError, not meta logits."""
    setattr(model, _UNLOADED, True)
    model.register_forward_pre_hook(_refuse_unloaded)  # model(ids), model.generate


def _refuse_unloaded(module: torch.nn.Module, args) -> None:
    raise ModelUnloadedError.after()


def is_unloaded(model: torch.nn.Module) -> bool:
    return bool(getattr(model, _UNLOADED, False))


def check_loaded(model: torch.nn.Module) -> None:
    """Raise a clear error for a model that was unloaded."""
    if is_unloaded(model):
        raise ModelUnloadedError.after()
