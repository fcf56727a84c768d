"""The hosted completion API's call (n, best_of, echo, logprobs) emulated on generate()."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence

from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from ..errors import PromptError, SettingsError
from .results import GenerationResult
from .run import generate
from .scoring import token_logprobs
from .settings import MAX_TOP_LOGPROBS, GenerationSettings, check_top_logprobs

MAX_LOGPROBS = MAX_TOP_LOGPROBS
MAX_STOPS = 4


def _settings(max_tokens: int, min_tokens: int, temperature: float, top_p: float, stop: list[str],
              seed: int | None, best_of: int) -> GenerationSettings:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
        raise SettingsError(f"temperature must be 0 (greedy) or more (got {temperature!r}).")
    greedy = temperature == 0
    if greedy and best_of > 1:
        raise SettingsError("best_of > 1 needs sampling: with temperature 0 every candidate would be the same.")
    return GenerationSettings(
        max_new_tokens=max_tokens, min_new_tokens=min_tokens, do_sample=not greedy,
        temperature=1.0 if greedy else float(temperature), top_p=top_p, top_k=0, stop=tuple(stop), seed=seed,
    )


def _logprobs_block(tokenizer: PreTrainedTokenizerBase, ids: list[int], scores: list[float | None],
                    tops: list[list[tuple[int, str, float]]], offset: int) -> dict:
    """The API's `logprobs` object: each token's text, its log-probability, its top alternatives as a
    {text: logprob} dict, and where it starts in the returned text."""
    tokens, offsets, position = [], [], offset
    for token_id in ids:
        text = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        tokens.append(text)
        offsets.append(position)
        position += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": scores,
        "top_logprobs": [({t: lp for _, t, lp in top} if top is not None else None) for top in tops],
        "text_offset": offsets,
    }


def complete(
    model: OPTForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Sequence[str],
    *,
    max_tokens: int = 16,
    min_tokens: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    n: int = 1,
    best_of: int | None = None,
    echo: bool = False,
    logprobs: int | None = None,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
) -> dict:
    """One completion request, as the OPT-175B hosted API took it, answered in its response shape.

    Args:
        prompt: a string, or a list of them (each gets `n` choices).
        max_tokens, min_tokens: bounds on the new tokens (the end of text is forbidden before min_tokens).
        temperature: 0 is greedy decoding; above 0, sampling at that temperature.
        top_p: nucleus sampling (1: off).
        n: choices returned per prompt.
        best_of: candidates sampled per prompt, of which the `n` with the highest mean log-probability
            per token are returned (default: n).
        echo: the choice's text starts with the prompt (and, with logprobs, its tokens are scored too,
            without alternatives; the first after OPT's start token).
        logprobs: return each token's log-probability and its `logprobs` most likely alternatives.
        stop: up to 4 strings; a choice ends before the first of them.
        seed: makes sampling repeatable.

    Returns:
        {"id", "object": "text_completion", "created", "model", "choices": [{"text", "index",
        "logprobs", "finish_reason"}], "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}.
    """
    prompts = _prompts(prompt)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    best_of = n if best_of is None else best_of
    _check_request(n, best_of, max_tokens, min_tokens, logprobs, stops)
    if not prompts:
        raise SettingsError("No prompt was given.")
    settings = _settings(max_tokens, min_tokens, temperature, top_p, stops, seed, best_of).with_seed_drawn()

    candidates: list[GenerationResult] = generate(
        model, tokenizer, [p for p in prompts for _ in range(best_of)], settings,
        top_logprobs=max(logprobs or 0, 1) if (best_of > n or logprobs is not None) else 0,
    )
    choices, usage_prompt, usage_completion = [], 0, 0
    for p_index, text in enumerate(prompts):
        group = candidates[p_index * best_of:(p_index + 1) * best_of]
        if best_of > n:  # keep the n most likely per token
            group = sorted(group, key=_mean_logprob, reverse=True)[:n]
        prompt_ids = group[0].prompt_token_ids
        usage_prompt += len(prompt_ids) - 1  # BOS is OPT's, not the user's
        for result in group:
            usage_completion += len(result.token_ids)
            choices.append(_choice(model, tokenizer, text, prompt_ids, result, echo, logprobs, len(choices)))
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": getattr(model.config, "_name_or_path", "") or "opt",
        "choices": choices,
        "usage": {"prompt_tokens": usage_prompt, "completion_tokens": usage_completion,
                  "total_tokens": usage_prompt + usage_completion},
    }


def _prompts(prompt) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise PromptError(f"prompt must be a string or a list of strings, got {_kind(prompt)}.")


def _check_request(n: int, best_of: int, max_tokens: int, min_tokens: int, logprobs: int | None,
                   stops: list[str]) -> None:
    """The hosted API's limits, as SettingsErrors a user can act on."""
    for name, value, low in (("n", n, 1), ("best_of", best_of, 1), ("max_tokens", max_tokens, 1),
                             ("min_tokens", min_tokens, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise SettingsError(f"{name} must be a whole number of at least {low} (got {value!r}).")
    if best_of < n:
        raise SettingsError(f"best_of ({best_of}) must be at least n ({n}): it is how many candidates n are picked from.")
    if logprobs is not None:
        check_top_logprobs(logprobs, "logprobs")
    if len(stops) > MAX_STOPS:
        raise SettingsError(f"At most {MAX_STOPS} stop strings (got {len(stops)}).")


def _kind(value) -> str:
    if isinstance(value, (list, tuple)):
        odd = next((v for v in value if not isinstance(v, str)), None)
        return f"a list holding {type(odd).__name__} ({odd!r:.40})"
    return f"{type(value).__name__} ({value!r:.40})"


def _mean_logprob(result: GenerationResult) -> float:
    """The result's mean log-probability as a sort key: a result without any sorts last."""
    mean = result.mean_logprob
    return -math.inf if mean is None else mean


def _choice(model, tokenizer, prompt: str, prompt_ids: list[int], result: GenerationResult, echo: bool,
            logprobs: int | None, index: int) -> dict:
    text = (prompt if echo else "") + result.text
    block = None
    if logprobs is not None:
        ids = [t.id for t in result.tokens]
        scores = [t.logprob for t in result.tokens]
        tops = [t.top[:logprobs] for t in result.tokens]
        offset = len(prompt) if echo else 0
        if echo:  # the prompt's own tokens too, each scored after the ones before it (and OPT's BOS)
            ids = prompt_ids[1:] + ids
            scores = (token_logprobs(model, prompt_ids) if len(prompt_ids) > 1 else []) + scores
            tops = [None] * (len(prompt_ids) - 1) + tops
            offset = 0
        block = _logprobs_block(tokenizer, ids, scores, tops, offset)
    finish = {"eos": "stop", "stop": "stop", "length": "length", "context": "length", "stopped": "stop"}
    return {"text": text, "index": index, "logprobs": block, "finish_reason": finish[result.finish_reason]}
