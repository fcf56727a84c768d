"""What a decoding backend takes (`DecodeJob`, `RunControl`), yields (`Step`s of `TokenInfo`), declares (`Backend`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field

import torch
from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from ...opt.sizes import PAD_TOKEN_ID
from ..results import TokenInfo
from ..settings import GenerationSettings

Step = list[TokenInfo | None]  # one decoding step: each row's new token, None where that row has none


class RunControl:
    """Shared by the caller and the decoding loop of one generation. The caller may `stop()` it (from any
    thread) and mark rows done (`finish_row`: a stop string was seen); the loop reads `stopped` and
    `finished_rows` between steps and ends within one step. `after_step()` runs the caller's progress hook
    in the thread that consumes the steps (the playground handles a waiting Stop click there)."""

    def __init__(self, on_step: Callable[[], None] | None = None):
        self._stop = threading.Event()
        self._finished_rows: set[int] = set()
        self._on_step = on_step

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def finish_row(self, row: int) -> None:
        """Row `row` needs no more tokens (its text reached a stop string)."""
        self._finished_rows.add(row)

    @property
    def finished_rows(self) -> frozenset[int]:
        return frozenset(self._finished_rows)

    def after_step(self) -> None:
        if self._on_step is not None:
            self._on_step()


@dataclass
class DecodeJob:
    """One generation as a backend sees it: prompts already encoded, fitted to the context and checked."""

    model: OPTForCausalLM
    tokenizer: PreTrainedTokenizerBase
    prompt_ids: list[list[int]]
    settings: GenerationSettings
    max_new_tokens: int
    logprobs: bool = False
    top_logprobs: int = 0
    control: RunControl = field(default_factory=RunControl)  # Stop and finished rows in, each step out
    notes: list[str] = field(default_factory=list)  # what the user should know about this run (a first compile)

    def padded(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts as one batch, padded on the left: (input ids, attention mask), [batch, longest]."""
        width = max(len(row) for row in self.prompt_ids)
        ids = torch.full((len(self.prompt_ids), width), PAD_TOKEN_ID, dtype=torch.long)
        mask = torch.zeros((len(self.prompt_ids), width), dtype=torch.long)
        for i, row in enumerate(self.prompt_ids):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        return ids.to(device), mask.to(device)

    def token(self, token_id: int, logprob: float | None = None, top: Iterable[tuple[int, float]] = ()) -> TokenInfo:
        """A row's new token as a step holds it (its text, and the log-probabilities a backend computed)."""
        return TokenInfo.decoded(self.tokenizer, token_id, logprob, top)


@dataclass(frozen=True, eq=False)  # one object per backend: compared and hashed by identity
class Backend:
    """A decoding method as `generate(method=...)` offers it: what it does, and how to run it."""

    name: str
    summary: str  # one line for people: error messages, the methods table in docs, the benchmark's rows
    modes: frozenset[str]  # the `GenerationSettings.mode`s it runs
    # A generator of steps; it ends within one step of `job.control.stopped` and is closed when the caller leaves.
    steps: Callable[[DecodeJob], Generator[Step, None, None]]
    carries_logprobs: bool = False  # its steps hold log-probabilities; otherwise they are scored afterwards
    cannot_run: Callable[[OPTForCausalLM, int], str | None] = lambda model, batch: None  # why not, for this model and batch
    chosen_by_auto: Callable[[OPTForCausalLM, int], bool] | None = None  # None: only when asked for by name
    why_not: dict[str, str] = field(default_factory=dict)  # mode -> why it does not do that mode, where telling helps
