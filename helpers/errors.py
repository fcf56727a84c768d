"""Errors a user can cause: each carries a message that says what happened and what to do."""

from __future__ import annotations

import errno
import sys

from .units import human_bytes

GPU_OUT_OF_MEMORY = ("The GPU ran out of memory. Use a smaller model, fewer new tokens or fewer beams "
                     "(`python -m helpers plan --model NAME` shows what fits).")
IMPORT_ADDRESS_SPACE_BYTES = 1024**3  # importing torch and transformers maps about 0.8 GiB (measured: VmPeak)


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


class OutputWriteError(HelpersError, OSError):
    """A result file that could not be written (a full disk, say); the file that was there is left as it was."""


class CheckpointError(HelpersError, ValueError):
    """A checkpoint file or folder that cannot be read or converted."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that asks to run code (a pickled global outside the allow-list)."""


class TrainingDataError(HelpersError, ValueError):
    """Text to fine-tune on that cannot be used: missing, empty, binary or not UTF-8, too short, a bad .jsonl line,
    a hub data set without a text column or out of reach."""


def address_space_limit() -> int | None:
    """This process's address-space limit in bytes (`ulimit -v`, RLIMIT_AS), or None where there is none."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def too_little_address_space() -> str | None:
    """The message for an address-space limit too low to import torch at all (where the C library would abort
    the process mid-import, past any handler), or None: checked before torch is first imported."""
    limit = address_space_limit()
    if limit is None or limit >= IMPORT_ADDRESS_SPACE_BYTES or "torch" in sys.modules:
        return None
    return (f"This process may use only {human_bytes(limit)} of address space (`ulimit -v`), and importing torch "
            f"and transformers alone needs about {human_bytes(IMPORT_ADDRESS_SPACE_BYTES)}. Raise the limit "
            "(`ulimit -v unlimited`) and run it again.")


def out_of_memory_message(exc: BaseException) -> str | None:
    """The one message for `exc` if it means memory ran out (the GPU's, RAM, or the `ulimit -v` limit:
    a MemoryError, ENOMEM, a library that could not be mapped), saying what ran out and what to do; else None."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return GPU_OUT_OF_MEMORY
    ran_out = (isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM)
               or (isinstance(exc, ImportError) and "failed to map segment" in str(exc)))
    if not ran_out:
        return None
    limit = address_space_limit()
    if limit is not None:
        return (f"This process ran out of memory: it may use at most {human_bytes(limit)} of address space "
                "(`ulimit -v`). Raise the limit (`ulimit -v unlimited`), or use a smaller model, fewer new tokens "
                "or a shorter prompt.")
    return ("This computer ran out of memory (RAM). Close other programs, or use a smaller model, fewer new tokens "
            "or a shorter prompt (`python -m helpers plan --model NAME` shows what fits).")


class ServerError(HelpersError, ConnectionError):
    """A served model's server that cannot be reached, refuses the request, or breaks off its answer."""


class AdapterError(HelpersError, ValueError):
    """A LoRA adapter that is not one, is damaged, does not fit the model it is applied to, or whose base is not
    here."""
