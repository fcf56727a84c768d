"""Fine-tuning OPT on your text: LoRA/QLoRA adapters through peft and transformers' Trainer."""

import sys
import types
from importlib import import_module

# Imported on first use (torch, transformers and peft are heavy); `from helpers.finetune import finetune` works.
_LAZY = {"finetune": "training", "FinetuneResult": "result", "TrainingProgress": "result", "PLANS": "lora",
         "TrainingPlan": "lora"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


class _CallablePackage(types.ModuleType):
    """`helpers.finetune` is both this package and the function (`from helpers import finetune;
    finetune(...)`): Python sets a package's submodule as the parent's attribute, so the name cannot be the
    function alone."""

    def __call__(self, *args, **kwargs):
        return __getattr__("finetune")(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
