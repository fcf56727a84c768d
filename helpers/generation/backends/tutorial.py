"""The 2022 tutorial's loop, kept as the reference: the whole sequence re-run each step."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import (
    OPTForCausalLM,
)

from ...opt.model_state import model_device


def tutorial_greedy_steps(model: OPTForCausalLM, input_ids: list[int], max_new_tokens: int = 30,
                          eos_token_id: int | None = None) -> Iterator[int]:
    """The 2022 tutorial's loop, kept as the reference: every step re-runs the WHOLE sequence through the
    model (no KV cache) and appends the argmax of the last position. Yields each new token id."""
    ids = list(input_ids)
    device = model_device(model)
    for _ in range(max_new_tokens):
        with torch.inference_mode():
            logits = model(torch.tensor([ids], device=device), use_cache=False).logits
        ids.append(int(torch.argmax(logits[0, -1, :])))
        yield ids[-1]
        if ids[-1] == eos_token_id:
            return


def tutorial_greedy(model: OPTForCausalLM, input_ids: list[int], max_new_tokens: int = 30,
                    eos_token_id: int | None = None) -> list[int]:
    """The tutorial's greedy loop (see `tutorial_greedy_steps`); returns the new token ids."""
    return list(tutorial_greedy_steps(model, input_ids, max_new_tokens, eos_token_id))
