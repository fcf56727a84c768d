"""Generate text with Meta's OPT models: load, generate, stream, measure (the notebooks' helper package)."""

from .errors import HelpersError, ModelLoadError, PromptError, SettingsError, UnknownModelError
from .generation import PRESETS, GenerationResult, GenerationSettings, generate, stream
from .loading import LoadedModel, load_model, unload
from .models import SIZES, get_size

__all__ = [
    "GenerationResult", "GenerationSettings", "HelpersError", "LoadedModel", "ModelLoadError", "PRESETS",
    "PromptError", "SIZES", "SettingsError", "UnknownModelError", "generate", "get_size", "load_model",
    "stream", "unload",
]
