"""The cached loop: prefill once, then one token a step, with sampling and contrastive search on top."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import (
    DynamicCache,
    InfNanRemoveLogitsProcessor,
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    OPTForCausalLM,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from ...opt.model_state import model_device
from ...opt.sizes import EOS_TOKEN_ID, PAD_TOKEN_ID
from ..settings import GenerationSettings
from .base import DecodeJob, DecodeStep
from .cpu_engine import engine_for, one_torch_thread

# transformers 5.2x renamed the forward argument `past_key_values` to `cache`; accept both releases.
CACHE_ARG = "cache" if "cache" in inspect.signature(OPTForCausalLM.forward).parameters else "past_key_values"


def prefill(model: OPTForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            cache: DynamicCache) -> torch.Tensor:
    """Run the prompt once, filling `cache`; return the logits of the last position, [batch, vocab]."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1,
                **{CACHE_ARG: cache})
    return out.logits[:, -1, :]


def decode_one_token(model: OPTForCausalLM, tokens: torch.Tensor, attention_mask: torch.Tensor,
                     cache: DynamicCache) -> torch.Tensor:
    """Feed one new token per sequence ([batch, 1]) on top of `cache`; return the next logits."""
    out = model(input_ids=tokens, attention_mask=attention_mask, use_cache=True, **{CACHE_ARG: cache})
    return out.logits[:, -1, :]


@torch.inference_mode()
def cached_greedy(model: OPTForCausalLM, input_ids: list[int], max_new_tokens: int = 30,
                  eos_token_id: int | None = None) -> list[int]:
    """The tutorial's greedy decoding done with a KV cache: the prompt is run once, then each step runs
    only the newest token. Same tokens as `tutorial_greedy`, a fraction of the work."""
    device = model_device(model)
    ids = torch.tensor([input_ids], device=device)
    mask = torch.ones_like(ids)
    cache = DynamicCache(config=model.config)
    logits = prefill(model, ids, mask, cache)
    new: list[int] = []
    for step in range(max_new_tokens):
        token = torch.argmax(logits, dim=-1, keepdim=True)  # [1, 1]
        new.append(int(token))
        if new[-1] == eos_token_id or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        logits = decode_one_token(model, token, mask, cache)
    return new


def logits_processors(settings: GenerationSettings, prompt_length: int) -> LogitsProcessorList:
    """transformers' own processors for these settings, in the order `model.generate` applies them."""
    processors = LogitsProcessorList()
    if settings.min_new_tokens:
        processors.append(MinNewTokensLengthLogitsProcessor(prompt_length, settings.min_new_tokens, EOS_TOKEN_ID))
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(settings.no_repeat_ngram_size))
    if settings.mode == "sample":
        if settings.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k:
            processors.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            processors.append(TopPLogitsWarper(settings.top_p))
        if settings.typical_p < 1.0:
            processors.append(TypicalLogitsWarper(settings.typical_p))
        # Extreme settings (a temperature of 1e-300, a penalty of 1e300) overflow to inf or nan; this keeps
        # the distribution valid (+inf becomes the largest float, nan 0) instead of failing in multinomial.
        processors.append(InfNanRemoveLogitsProcessor())
    return processors


def sample(scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from processed scores ([batch, vocab]) -> [batch]; a row with no valid
    probability left (every score -inf) falls back to its most likely token."""
    probs = torch.softmax(scores.float(), dim=-1)
    valid = torch.isfinite(probs).all(dim=-1) & (probs.sum(dim=-1) > 0)
    if not bool(valid.all()):
        probs = torch.where(valid[:, None], probs, torch.nn.functional.one_hot(
            scores.argmax(dim=-1), probs.shape[-1]).to(probs.dtype))
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


@dataclass
class Step:
    """One decoding step: the chosen token of each row and the model's raw log-probabilities."""

    tokens: torch.Tensor  # [batch]
    logprobs: torch.Tensor | None  # [batch] log p(token) under the model (before temperature etc.)
    top_ids: torch.Tensor | None  # [batch, k] the k most likely tokens
    top_logprobs: torch.Tensor | None  # [batch, k]

    def as_decode_step(self) -> DecodeStep:
        """The same step as plain numbers, as every backend yields it."""
        tokens = self.tokens.tolist()
        if self.logprobs is None:
            return DecodeStep(tokens)
        top = None
        if self.top_ids is not None:
            top = [list(zip(ids, lps)) for ids, lps in zip(self.top_ids.tolist(), self.top_logprobs.tolist())]
        return DecodeStep(tokens, self.logprobs.tolist(), top)


def _step(tokens: torch.Tensor, logits: torch.Tensor, top: int, want_logprobs: bool) -> Step:
    if not want_logprobs:
        return Step(tokens, None, None, None)
    logprobs = F.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(1, tokens[:, None]).squeeze(1)
    if top:
        top_logprobs, top_ids = logprobs.topk(top, dim=-1)
        return Step(tokens, chosen, top_ids, top_logprobs)
    return Step(tokens, chosen, None, None)


def _rows_done(done: torch.Tensor, tokens: torch.Tensor,
               finished: Callable[[], torch.Tensor | None] | None) -> torch.Tensor:
    """Rows that are over after this step: they were, they just produced EOS, or the caller says so."""
    done = done | (tokens == EOS_TOKEN_ID)
    if finished is not None and (extra := finished()) is not None:
        done = done | extra.to(done.device)
    return done


class _TransformersSteps:
    """Prefill and decode steps through transformers' forward and a DynamicCache (any batch, any device)."""

    def __init__(self, model: OPTForCausalLM):
        self.model, self.cache = model, DynamicCache(config=model.config)

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return prefill(self.model, input_ids, attention_mask, self.cache)

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return decode_one_token(self.model, tokens[:, None], attention_mask, self.cache)


class _EngineSteps:
    """The same steps through the lean CPU engine (one sequence)."""

    def __init__(self, model: OPTForCausalLM, max_new_tokens: int):
        self.engine, self.max_new_tokens = engine_for(model), max_new_tokens
        self.sequence = None

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.sequence = self.engine.sequence(input_ids.shape[1], self.max_new_tokens)  # this run's own cache
        return self.sequence.prefill(input_ids[0].tolist())

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.sequence.step(int(tokens[0]))


def decode(
    model: OPTForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: GenerationSettings,
    *,
    max_new_tokens: int | None = None,
    generator: torch.Generator | None = None,
    logprobs: bool = False,
    top_logprobs: int = 0,
    finished: Callable[[], torch.Tensor | None] | None = None,
    engine: bool = False,
) -> Iterator[Step]:
    """The cached loop for greedy, sampling and contrastive search, one `Step` per new token.

    `input_ids`/`attention_mask` are [batch, length], left padded. Rows that reach EOS are fed
    `<pad>` afterwards (as `model.generate` does); the loop ends when every row is done, after
    `max_new_tokens` steps, or when `finished()` (called between steps) returns an all-True mask
    (rows the caller considers done: stop strings, a Stop button). Closing the iterator stops it
    within one step. `engine=True` runs the steps on the lean CPU engine (`helpers.generation.backends.cpu_engine`).
    """
    if settings.mode == "contrastive":
        yield from _contrastive(model, input_ids, attention_mask, settings, max_new_tokens=max_new_tokens,
                                logprobs=logprobs, top_logprobs=top_logprobs, finished=finished)
        return
    max_new_tokens = max_new_tokens or settings.max_new_tokens
    processors = logits_processors(settings, input_ids.shape[1])
    threads = contextlib.nullcontext()
    if engine:
        steps = _EngineSteps(model, max_new_tokens)
        threads = one_torch_thread() if steps.engine.numpy_blas else threads
    else:
        steps = _TransformersSteps(model)
    sequences, sampling = input_ids, settings.mode == "sample"
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    with torch.inference_mode(), threads:
        logits = steps.prefill(input_ids, attention_mask)
        for step in range(max_new_tokens):
            scores = processors(sequences, logits)
            tokens = sample(scores, generator) if sampling else torch.argmax(scores, dim=-1)
            tokens = torch.where(done, PAD_TOKEN_ID, tokens)
            yield _step(tokens, logits, top_logprobs, logprobs)
            done = _rows_done(done, tokens, finished)
            if bool(done.all()) or step == max_new_tokens - 1:
                return
            sequences = torch.cat([sequences, tokens[:, None]], dim=1)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=1)
            logits = steps.step(tokens, attention_mask)


def cached_steps(job: DecodeJob) -> Iterator[DecodeStep]:
    """The cached loop as a backend: any batch (left padded), any device."""
    return _loop_steps(job, engine=False)


def engine_steps(job: DecodeJob) -> Iterator[DecodeStep]:
    """The cached loop stepping on the lean CPU engine: one prompt of an fp32 model on the CPU."""
    return _loop_steps(job, engine=True)


def _loop_steps(job: DecodeJob, engine: bool) -> Iterator[DecodeStep]:
    device = model_device(job.model)
    ids, mask = job.padded(device)
    generator = None
    if job.settings.mode == "sample":
        generator = torch.Generator(device=device).manual_seed(job.settings.seed)
    steps = decode(job.model, ids, mask, job.settings, max_new_tokens=job.max_new_tokens, generator=generator,
                   logprobs=job.logprobs, top_logprobs=job.top_logprobs, finished=job.finished, engine=engine)
    with contextlib.closing(steps):
        for step in steps:
            yield step.as_decode_step()


def _decoder_step(model: OPTForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  cache: DynamicCache) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden states [batch, new, dim], logits of the last position [batch, vocab])."""
    hidden = model.model.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=True,
                                 **{CACHE_ARG: cache}).last_hidden_state
    return hidden, model.lm_head(hidden[:, -1, :])


def _contrastive(
    model: OPTForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: GenerationSettings,
    *,
    max_new_tokens: int | None,
    logprobs: bool,
    top_logprobs: int,
    finished: Callable[[], torch.Tensor | None] | None,
) -> Iterator[Step]:
    """Contrastive search (Su et al., 2022): among the top-k candidates, pick the one maximizing
    (1 - alpha) * p(candidate) - alpha * max cosine similarity of its hidden state to the context's.

    Written here because transformers 5 moved it out of the library into hub code that needs
    `trust_remote_code` and a network connection.
    """
    k, alpha = settings.top_k, settings.penalty_alpha
    max_new_tokens = max_new_tokens or settings.max_new_tokens
    processors = logits_processors(settings, input_ids.shape[1])
    batch = input_ids.shape[0]
    cache = DynamicCache(config=model.config)
    sequences = input_ids
    done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    with torch.inference_mode():
        context, logits = _decoder_step(model, input_ids, attention_mask, cache)
        context = F.normalize(context.float(), dim=-1)  # [batch, length, dim], unit vectors: normalized once
        context_mask = attention_mask.bool()
        for step in range(max_new_tokens):
            scores = processors(sequences, logits)
            probs = torch.softmax(scores.float(), dim=-1)
            top_probs, candidates = probs.topk(k, dim=-1)  # [batch, k]
            # One forward pass over all candidates: each row's cache repeated k times.
            cache.batch_repeat_interleave(k)
            mask_k = torch.cat([attention_mask, attention_mask.new_ones((batch, 1))], dim=1).repeat_interleave(k, 0)
            hidden_k, logits_k = _decoder_step(model, candidates.reshape(-1, 1), mask_k, cache)
            hidden_k = F.normalize(hidden_k[:, -1, :].float(), dim=-1).view(batch, k, -1)
            similarity = torch.einsum("bkd,btd->bkt", hidden_k, context)
            similarity = similarity.masked_fill(~context_mask[:, None, :], -1.0).amax(dim=-1)  # [batch, k]
            score = (1 - alpha) * top_probs - alpha * similarity
            best = score.argmax(dim=-1)  # [batch]
            tokens = candidates.gather(1, best[:, None]).squeeze(1)
            tokens = torch.where(done, PAD_TOKEN_ID, tokens)
            yield _step(tokens, logits, top_logprobs, logprobs)
            done = _rows_done(done, tokens, finished)
            if bool(done.all()) or step == max_new_tokens - 1:
                return
            chosen = torch.arange(batch, device=best.device) * k + best
            cache.batch_select_indices(chosen)
            logits = logits_k[chosen]
            context = torch.cat([context, _rows(hidden_k, best)[:, None, :]], dim=1)
            context_mask = torch.cat([context_mask, context_mask.new_ones((batch, 1))], dim=1)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((batch, 1))], dim=1)
            sequences = torch.cat([sequences, tokens[:, None]], dim=1)


def _rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[b, index[b]] for each row b of a [batch, k, dim] tensor."""
    return values[torch.arange(values.shape[0], device=index.device), index]
