"""Teacher-forced log-probabilities of given tokens under a model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import OPTForCausalLM

from ..opt.model_state import model_device
from ..opt.sizes import BOS_TOKEN_ID

# ------------------------------------------------------------------------------------------ under a model


@torch.inference_mode()
def token_logprobs(model: OPTForCausalLM, ids: Sequence[int], start: int = 1, window: int | None = None,
                   stride: int = 512) -> list[float]:
    """log p(ids[i] | ids[:i]) for i from `start` (1: every token after OPT's BOS) to the end.

    Past the model's positions (2048 for OPT), windows of `window` tokens slide forward by `stride`:
    each token is scored once, with up to window - 1 tokens of context (Hugging Face's recipe for
    perplexity of long texts). Every window after the first starts with BOS, as OPT's inputs do.
    """
    window = window or model.config.max_position_embeddings
    if window < 2 or not 0 < stride < window:
        raise ValueError(f"Need 2 <= window and 0 < stride < window (got window={window}, stride={stride}).")
    ids = list(ids)
    device = model_device(model)
    out: list[float] = []
    scored = start  # the next position to score
    while scored < len(ids):
        end = min(len(ids), max(scored + stride, window) if scored == start else scored + stride)
        begin = max(0, end - window)
        chunk = ids[begin:end]
        if begin > 0:  # a later window: OPT always sees BOS first
            chunk = [BOS_TOKEN_ID] + chunk[1:]
        logits = model(torch.tensor([chunk], device=device)).logits[0].float()
        logprobs = F.log_softmax(logits[:-1], dim=-1)
        targets = torch.tensor(chunk[1:], device=device)
        per_token = logprobs.gather(1, targets[:, None]).squeeze(1).tolist()
        out += per_token[scored - begin - 1:]
        scored = end
    return out
