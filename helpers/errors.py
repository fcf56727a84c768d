"""Errors a user can cause: each carries a message that says what happened and what to do."""

from __future__ import annotations


class HelpersError(Exception):
    """Base of every error `helpers` raises on purpose; its message is meant for the user."""


class UnknownModelError(HelpersError, ValueError):
    """A model name that is neither an OPT size, a hub id nor an existing folder."""


class ModelLoadError(HelpersError, OSError):
    """A model that could not be loaded: unreachable hub, missing or incomplete folder, not an OPT model."""


class SettingsError(HelpersError, ValueError):
    """Generation settings that cannot work together or are out of range."""


class PromptError(HelpersError, ValueError):
    """A prompt that cannot be generated from (empty batch, longer than the context)."""


class ModelUnloadedError(HelpersError, RuntimeError):
    """A model used after `unload()`."""

    @classmethod
    def after(cls) -> ModelUnloadedError:
        return cls("This model was unloaded to free its memory. Load it again with load_model(...).")

    @classmethod
    def midway(cls) -> ModelUnloadedError:
        return cls("The model was unloaded while this generation was running, so it stopped. Load it again "
                   "with load_model(...) to generate.")


class MemoryBudgetError(HelpersError, MemoryError):
    """Work that would not fit in this machine's memory, refused before it starts (instead of the kernel's
    out-of-memory kill)."""


class CheckpointError(HelpersError, ValueError):
    """A checkpoint file or folder that cannot be read or converted."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that asks to run code (a pickled global outside the allow-list)."""


class ServerError(HelpersError, ConnectionError):
    """A served model's server that cannot be reached, refuses the request, or breaks off its answer."""
