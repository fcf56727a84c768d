"""What a quantized or peer row costs in fidelity: the greedy text kept (a prefix), teacher-forced agreement, logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from ..generation.backends.cpu_engine import engine_for, supported
from ..memory.dtypes import dtype_name
from ..opt.model_state import model_device
from ..opt.tokenizer import encode_prompt


@dataclass
class Quality:
    """How far a quantized model (or a peer) is from the reference, on the benchmark's prompt and continuation."""

    reference_dtype: str
    max_logit_error: float
    greedy_agreement: float  # share of positions where both pick the same next token (teacher-forced)
    same_greedy_tokens: bool  # the free-running greedy continuations are identical
    # The generated text a reader sees: its first `greedy_prefix_tokens` tokens are the reference's, of
    # `compared_tokens` (None in results written before these were measured).
    greedy_prefix_tokens: int | None = None
    compared_tokens: int | None = None
    greedy_prefix_fraction: float | None = None


def greedy_prefix(reference: list[int], tokens: list[int]) -> int:
    """How many tokens `tokens` shares with `reference` before they first differ (both free-running greedy)."""
    for position, (want, got) in enumerate(zip(reference, tokens)):
        if want != got:
            return position
    return min(len(reference), len(tokens))


def prefix_text(quality: Quality) -> str:
    """'all 128 tokens', or 'the first 14 of 128 tokens (11%)': the table's words for the prefix kept."""
    if quality.greedy_prefix_tokens is None:
        return ""
    kept, of = quality.greedy_prefix_tokens, quality.compared_tokens
    return f"all {of} tokens" if kept == of else f"the first {kept} of {of} tokens ({kept / of:.0%})"


def logits_of(subject, ids: list[int]) -> torch.Tensor:
    """Float32 logits at every position of `ids`, on the CPU: a transformers model (by the CPU engine where it runs
    the model's decode, as it computes them: bf16 weights in fp32 arithmetic), or a peer (its `logits`)."""
    if not isinstance(subject, torch.nn.Module):
        return subject.logits(ids)
    if supported(subject, 1):
        sequence = engine_for(subject).sequence(len(ids), 0)
        return torch.cat([sequence.prefill(ids[:1])] + [sequence.step(token) for token in ids[1:]])
    with torch.inference_mode():
        return subject(torch.tensor([ids], device=model_device(subject))).logits[0].float().cpu()


def quality_against(model, reference: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, prompt: str,
                    reference_tokens: list[int], tokens: list[int]) -> Quality:
    """Teacher-forced on the reference's greedy continuation: the largest logit difference and how often the
    next-token choices agree; free-running: how long the greedy continuation stays the reference's."""
    ids = encode_prompt(tokenizer, prompt) + reference_tokens
    start = len(ids) - len(reference_tokens) - 1
    ref = logits_of(reference, ids)[start:-1]
    got = logits_of(model, ids)[start:-1]
    kept = greedy_prefix(reference_tokens, tokens)
    return Quality(
        reference_dtype=dtype_name(reference.dtype),
        max_logit_error=float((ref - got).abs().max()),
        greedy_agreement=float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
        same_greedy_tokens=tokens == reference_tokens,
        greedy_prefix_tokens=kept, compared_tokens=len(reference_tokens),
        greedy_prefix_fraction=kept / len(reference_tokens) if reference_tokens else None,
    )
