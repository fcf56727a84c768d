"""Measures of generated text: repetition, degeneration, log-probabilities and perplexity under a model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from ..generation.scoring import token_logprobs
from ..opt.tokenizer import encode_prompt


def ngrams(tokens: Sequence, n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence, n: int) -> float:
    """Distinct n-grams over all n-grams (1.0: no n-gram repeats; near 0: one n-gram over and over).
    A sequence shorter than n has no n-grams and counts as fully distinct."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 1.0


def repeated_ngram_rate(tokens: Sequence, n: int) -> float:
    """The share of n-grams that already occurred earlier in the sequence."""
    grams = ngrams(tokens, n)
    seen, repeats = set(), 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams) if grams else 0.0


@dataclass(frozen=True)
class Loop:
    """A stretch where the same `period` tokens repeat back to back: tokens[start:start + length]."""

    start: int
    period: int
    length: int  # tokens in the stretch, the first occurrence of the repeated unit included

    @property
    def repeats(self) -> float:
        return self.length / self.period if self.period else 0.0


def longest_loop(tokens: Sequence, max_period: int = 64) -> Loop:
    """The longest stretch in which every token equals the one `period` places before it (for some
    period up to `max_period`) and the unit repeats in full at least once, counted with its first unit:
    '4090' thirty times is Loop(period=1, length=30); 'a b a b a' is Loop(period=2, length=5); one token
    seen again later ('a b c a') is no loop: Loop(0, 0, 0)."""
    best = Loop(0, 0, 0)
    for period in range(1, min(max_period, len(tokens) // 2) + 1):
        run = 0
        for i in range(period, len(tokens)):
            run = run + 1 if tokens[i] == tokens[i - period] else 0
            if run >= period and run + period > best.length:  # the unit repeated in full at least once
                best = Loop(i - run - period + 1, period, run + period)
    return best


@dataclass(frozen=True)
class Repetition:
    distinct_1: float
    distinct_2: float
    distinct_3: float
    repeated_3gram_rate: float
    longest_loop: int  # tokens in the longest back-to-back repetition
    loop_period: int

    def as_dict(self) -> dict:
        return asdict(self)


def repetition(tokens: Sequence) -> Repetition:
    """Every repetition measure of one sequence at once."""
    loop = longest_loop(tokens)
    return Repetition(distinct_n(tokens, 1), distinct_n(tokens, 2), distinct_n(tokens, 3),
                      repeated_ngram_rate(tokens, 3), loop.length, loop.period)


def perplexity(model: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, text: str, *, context: str = "",
               window: int | None = None, stride: int | None = None) -> float:
    """exp(mean negative log-likelihood) of `text`'s tokens under `model`, after `context` (a prompt
    whose tokens are conditioned on but not scored)."""
    prefix = encode_prompt(tokenizer, context)
    body = tokenizer(text, add_special_tokens=False).input_ids
    if not body:
        raise ValueError("There is no text to score: perplexity needs at least one token.")
    scores = token_logprobs(model, prefix + body, start=len(prefix), window=window, stride=stride)
    return math.exp(-sum(scores) / len(scores))
