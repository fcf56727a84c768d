"""The 2022 tutorial's loop, kept as the reference: the whole sequence re-run each step."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
from transformers import OPTForCausalLM

from ...opt.model_state import model_device
from ...opt.sizes import EOS_TOKEN_ID
from .base import DecodeJob, Step


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
    """Deprecated: `generate(model, tokenizer, ids, GenerationSettings.greedy(...), method="tutorial")`."""
    warnings.warn("tutorial_greedy is deprecated: use generate(..., method='tutorial') with greedy settings.",
                  DeprecationWarning, stacklevel=2)
    return list(tutorial_greedy_steps(model, input_ids, max_new_tokens, eos_token_id))


def tutorial_steps(job: DecodeJob) -> Iterator[Step]:
    """The tutorial's loop has no batch: the rows run one after another, each streamed, each ending at EOS,
    after the job's new tokens, or when the caller counts it done (a stop string). After Stop, no further
    row is started."""
    rows, control = len(job.prompt_ids), job.control
    for row, ids in enumerate(job.prompt_ids):
        for token in tutorial_greedy_steps(job.model, ids, job.max_new_tokens, EOS_TOKEN_ID):
            yield [job.token(token) if i == row else None for i in range(rows)]
            if control.stopped:
                return
            if row in control.finished_rows:
                break
