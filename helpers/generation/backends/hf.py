"""transformers' model.generate as a backend: its token queue and its stop criterion."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

# model.generate samples from torch's one process-wide generator (seeded per run), so sampling runs through
# it take turns: a seeded result must not depend on what else is running. The cached loop and the CPU
# engine sample from a generator of their own and need no turn.
_GLOBAL_RNG = threading.Lock()


class _TokenQueue(BaseStreamer):
    """Receives `model.generate`'s new tokens (after the prompt) and queues them per step."""

    def __init__(self, tokens: queue.Queue):
        self.tokens, self.prompt_seen = tokens, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.tokens.put(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class _StopWhenSet(StoppingCriteria):
    """Ends `model.generate` (beam search included) within one step once the event is set."""

    def __init__(self, event: threading.Event, on_step: Callable[[], None] | None = None):
        self.event, self.on_step = event, on_step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.on_step is not None:
            self.on_step()
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
