"""Teacher-forced log-probabilities of given tokens under a model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import OPTForCausalLM

from ..opt.model_state import model_device
from ..opt.sizes import BOS_TOKEN_ID

# ------------------------------------------------------------------------------------------ under a model


def token_logprobs(model: OPTForCausalLM, ids: Sequence[int], start: int = 1, window: int | None = None,
                   stride: int | None = None) -> list[float]:
    """log p(ids[i] | ids[:i]) for i from `start` (1: every token after OPT's BOS) to the end.

    Past the model's positions (2048 for OPT), windows of `window` tokens slide forward by `stride` (512, or
    less for a model with fewer positions):
    each token is scored once, with up to window - 1 tokens of context (Hugging Face's recipe for
    perplexity of long texts). Every window after the first starts with BOS, as OPT's inputs do.
    """
    return [logprob for logprob, _ in scored_tokens(model, ids, start, 0, window, stride)]


@torch.inference_mode()
def scored_tokens(model: OPTForCausalLM, ids: Sequence[int], start: int = 1, top: int = 0,
                  window: int | None = None, stride: int | None = None) -> list[tuple[float, list[tuple[int, float]]]]:
    """As `token_logprobs`, each with the `top` most likely tokens at its position: (logprob, [(id, logprob)])."""
    window = window or model.config.max_position_embeddings
    stride = min(512, window - 1) if stride is None else stride
    if window < 2 or not 0 < stride < window:
        raise ValueError(f"Need 2 <= window and 0 < stride < window (got window={window}, stride={stride}).")
    ids = list(ids)
    device = model_device(model)
    out: list[tuple[float, list[tuple[int, float]]]] = []
    scored = start  # the next position to score
    while scored < len(ids):
        end = min(len(ids), max(scored + stride, window) if scored == start else scored + stride)
        begin = max(0, end - window)
        chunk = ids[begin:end]
        if begin > 0:  # a later window: OPT always sees BOS first
            chunk = [BOS_TOKEN_ID] + chunk[1:]
        logits = model(torch.tensor([chunk], device=device), use_cache=False).logits[0, scored - begin - 1:-1].float()
        logprobs = F.log_softmax(logits, dim=-1)
        targets = torch.tensor(chunk[scored - begin:], device=device)
        chosen = logprobs.gather(1, targets[:, None]).squeeze(1).tolist()
        alternatives = [[] for _ in chosen]
        if top:
            values, indices = logprobs.topk(top, dim=-1)
            alternatives = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
        out += zip(chosen, alternatives)
        scored = end
    return out
