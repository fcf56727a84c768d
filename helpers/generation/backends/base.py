"""What every decoding backend takes (a `DecodeJob`), yields (`DecodeStep`s) and declares (a `Backend`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch
from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from ...opt.sizes import PAD_TOKEN_ID
from ..settings import GenerationSettings


@dataclass
class DecodeStep:
    """One decoding step: each row's new token (None: that row has no token at this step) and, from a
    backend that computes them, the model's log-probability of it and the most likely alternatives."""

    tokens: list[int | None]
    logprobs: list[float] | None = None
    top: list[list[tuple[int, float]]] | None = None  # per row: (token id, log-probability), most likely first


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
    stop_event: threading.Event = field(default_factory=threading.Event)
    finished: Callable[[], torch.Tensor | None] = lambda: None  # rows the caller considers done, asked between steps
    on_step: Callable[[], None] | None = None  # for a backend that steps inside a library call (beam search)
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


@dataclass(frozen=True, eq=False)  # one object per backend: compared and hashed by identity
class Backend:
    """A decoding method as `generate(method=...)` offers it: what it does, and how to run it."""

    name: str
    summary: str  # one line for people: error messages, the README's methods table, the benchmark's rows
    modes: frozenset[str]  # the `GenerationSettings.mode`s it runs
    steps: Callable[[DecodeJob], Generator[DecodeStep, None, None]]  # a generator: closed when the caller stops
    carries_logprobs: bool = False  # its steps hold log-probabilities; otherwise they are scored afterwards
    cannot_run: Callable[[OPTForCausalLM, int], str | None] = lambda model, batch: None  # why not, for this model and batch
    chosen_by_auto: Callable[[OPTForCausalLM, int], bool] | None = None  # None: only when asked for by name
    why_not: dict[str, str] = field(default_factory=dict)  # mode -> why it does not do that mode, where telling helps
