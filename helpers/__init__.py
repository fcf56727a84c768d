"""Generate text with Meta's OPT models: load, generate, stream, measure (the notebooks' helper package)."""

from importlib import import_module

from .errors import HelpersError, ModelLoadError, PromptError, SettingsError, UnknownModelError

# Imported on first use, so that `python -m helpers` answers Ctrl-C (or --help) at once rather than from
# inside torch's import; `from helpers import generate` works as before.
_LAZY = {
    "PRESETS": "generation.settings", "GenerationSettings": "generation.settings",
    "GenerationResult": "generation.results", "generate": "generation.run", "stream": "generation.streaming",
    "LoadedModel": "loading.model", "load_model": "loading.model", "unload": "loading.model",
    "SIZES": "opt.sizes", "get_size": "opt.sizes",
}
# `finetune` is the package helpers.finetune, which is callable: finetune(model, data, out, ...) trains an adapter.

__all__ = [
    "GenerationResult", "GenerationSettings", "HelpersError", "LoadedModel", "ModelLoadError", "PRESETS",
    "PromptError", "SIZES", "SettingsError", "UnknownModelError", "finetune", "generate", "get_size", "load_model",
    "stream", "unload",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    else:
        try:  # a submodule, as `helpers.generation` was reachable after `import helpers`
            value = import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":  # the submodule exists but needs something missing
                raise
            raise AttributeError(f"module 'helpers' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
