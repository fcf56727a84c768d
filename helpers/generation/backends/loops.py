"""The cached loop: prefill once, then one token a step, as gpt-fast and nanoGPT write it; contrastive search."""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator

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
from ..results import TokenInfo
from ..settings import GenerationSettings
from .base import DecodeJob, Step
from .cpu_engine import engine_for, one_torch_thread

# transformers 5.2x renamed the forward argument `past_key_values` to `cache`; accept both releases.
CACHE_ARG = "cache" if "cache" in inspect.signature(OPTForCausalLM.forward).parameters else "past_key_values"

Prefill = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (ids [batch, length], mask) -> logits [batch, vocab]
DecodeOneToken = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (tokens [batch], mask) -> logits


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


def step_of(job: DecodeJob, tokens: torch.Tensor, logits: torch.Tensor, done: torch.Tensor) -> Step:
    """The step as the run takes it: each row's token (None for a row already over) with, when asked for,
    its log-probability under the model (before temperature and the other processors) and the top k."""
    ids, over = tokens.tolist(), done.tolist()
    chosen, top = [None] * len(ids), [()] * len(ids)
    if job.logprobs:
        logprobs = F.log_softmax(logits.float(), dim=-1)
        chosen = logprobs.gather(1, tokens[:, None]).squeeze(1).tolist()
        if job.top_logprobs:
            values, indices = logprobs.topk(job.top_logprobs, dim=-1)
            top = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    decoded = TokenInfo.decoded
    return [None if o else decoded(job.tokenizer, i, lp, t) for i, o, lp, t in zip(ids, over, chosen, top)]


def rows_over(done: torch.Tensor, tokens: torch.Tensor, job: DecodeJob) -> torch.Tensor:
    """Rows that need no further token: they were over, they just produced EOS, or the caller says so
    (a stop string in their text)."""
    done = done | (tokens == EOS_TOKEN_ID)
    if job.settings.stop:  # only stop strings finish single rows early (Stop ends them all)
        for row in job.control.finished_rows:
            done[row] = True
    return done


@torch.inference_mode()
def generate(job: DecodeJob, prefill: Prefill, decode_one_token: DecodeOneToken) -> Iterator[Step]:
    """The cached loop (greedy or sampling), one `Step` per new token, on any forward that keeps its own cache.

    Rows that reach EOS are fed `<pad>` afterwards (as `model.generate` does) and have no token in later
    steps; the loop ends when every row is over, after the job's new tokens, or when the caller stops it.
    """
    settings, control = job.settings, job.control
    # 1. The prompts as one batch, padded on the left: [batch, length] ids and mask (1 = a real token).
    ids, mask = job.padded(model_device(job.model))
    processors = logits_processors(settings, ids.shape[1])
    sampling = settings.mode == "sample"
    generator = torch.Generator(device=ids.device).manual_seed(settings.seed) if sampling else None
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    # 2. Prefill: the whole prompt in one forward pass, filling the cache; logits for the first new token.
    logits = prefill(ids, mask)
    for step in range(job.max_new_tokens):
        # 3. Pick: transformers' processors (penalties, temperature, top-k/p) on the scores, then the most
        #    likely token or a draw from the distribution; a row that is over gets <pad>.
        scores = processors(ids, logits)
        tokens = sample(scores, generator) if sampling else torch.argmax(scores, dim=-1)
        tokens = torch.where(done, PAD_TOKEN_ID, tokens)
        # 4. Hand the step over (the caller streams its text), then see which rows are over.
        yield step_of(job, tokens, logits, done)
        done = rows_over(done, tokens, job)
        if control.stopped or bool(done.all()) or step == job.max_new_tokens - 1:
            return
        # 5. Decode one token: only the new tokens run through the model, on top of the cache.
        ids = torch.cat([ids, tokens[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        logits = decode_one_token(tokens, mask)


def cached_steps(job: DecodeJob) -> Iterator[Step]:
    """The cached loop through transformers' forward and a DynamicCache: any batch (left padded), any device;
    contrastive search too."""
    if job.settings.mode == "contrastive":
        return contrastive(job)
    model, cache = job.model, DynamicCache(config=job.model.config)
    return generate(job, lambda ids, mask: prefill(model, ids, mask, cache),
                    lambda tokens, mask: decode_one_token(model, tokens[:, None], mask, cache))


def engine_steps(job: DecodeJob) -> Iterator[Step]:
    """The cached loop stepping on the lean CPU engine: one prompt of an fp32 model on the CPU."""
    engine = engine_for(job.model)
    sequence = engine.sequence(len(job.prompt_ids[0]), job.max_new_tokens)  # this run's own cache
    with one_torch_thread() if engine.numpy_blas else contextlib.nullcontext():
        yield from generate(job, lambda ids, mask: sequence.prefill(ids[0].tolist()),
                            lambda tokens, mask: sequence.step(int(tokens[0])))


@torch.inference_mode()
def cached_greedy(model: OPTForCausalLM, input_ids: list[int], max_new_tokens: int = 30,
                  eos_token_id: int | None = None) -> list[int]:
    """Deprecated: `generate(model, tokenizer, ids, GenerationSettings.greedy(...), method="cached")`."""
    warnings.warn("cached_greedy is deprecated: use generate(..., method='cached') with greedy settings.",
                  DeprecationWarning, stacklevel=2)
    ids = torch.tensor([input_ids], device=model_device(model))
    mask, cache, new = torch.ones_like(ids), DynamicCache(config=model.config), []
    logits = prefill(model, ids, mask, cache)
    for step in range(max_new_tokens):
        token = torch.argmax(logits, dim=-1, keepdim=True)  # [1, 1]
        new.append(int(token))
        if new[-1] == eos_token_id or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        logits = decode_one_token(model, token, mask, cache)
    return new


def _decoder_step(model: OPTForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  cache: DynamicCache) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden states [batch, new, dim], logits of the last position [batch, vocab])."""
    hidden = model.model.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=True,
                                 **{CACHE_ARG: cache}).last_hidden_state
    return hidden, model.lm_head(hidden[:, -1, :])


@torch.inference_mode()
def contrastive(job: DecodeJob) -> Iterator[Step]:
    """Contrastive search (Su et al., 2022): among the top-k candidates, pick the one maximizing
    (1 - alpha) * p(candidate) - alpha * max cosine similarity of its hidden state to the context's.

    Written here because transformers 5 moved it out of the library into hub code that needs
    `trust_remote_code` and a network connection.
    """
    model, settings, control = job.model, job.settings, job.control
    k, alpha = settings.top_k, settings.penalty_alpha
    ids, mask = job.padded(model_device(model))
    processors = logits_processors(settings, ids.shape[1])
    batch = ids.shape[0]
    cache = DynamicCache(config=model.config)
    done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    context, logits = _decoder_step(model, ids, mask, cache)
    context = F.normalize(context.float(), dim=-1)  # [batch, length, dim], unit vectors: normalized once
    context_mask = mask.bool()
    for step in range(job.max_new_tokens):
        scores = processors(ids, logits)
        probs = torch.softmax(scores.float(), dim=-1)
        top_probs, candidates = probs.topk(k, dim=-1)  # [batch, k]
        # One forward pass over all candidates: each row's cache repeated k times.
        cache.batch_repeat_interleave(k)
        mask_k = torch.cat([mask, mask.new_ones((batch, 1))], dim=1).repeat_interleave(k, 0)
        hidden_k, logits_k = _decoder_step(model, candidates.reshape(-1, 1), mask_k, cache)
        hidden_k = F.normalize(hidden_k[:, -1, :].float(), dim=-1).view(batch, k, -1)
        similarity = torch.einsum("bkd,btd->bkt", hidden_k, context)
        similarity = similarity.masked_fill(~context_mask[:, None, :], -1.0).amax(dim=-1)  # [batch, k]
        best = ((1 - alpha) * top_probs - alpha * similarity).argmax(dim=-1)  # [batch]
        tokens = torch.where(done, PAD_TOKEN_ID, candidates.gather(1, best[:, None]).squeeze(1))
        yield step_of(job, tokens, logits, done)
        done = rows_over(done, tokens, job)
        if control.stopped or bool(done.all()) or step == job.max_new_tokens - 1:
            return
        chosen = torch.arange(batch, device=best.device) * k + best  # keep each row's chosen candidate
        cache.batch_select_indices(chosen)
        logits = logits_k[chosen]
        context = torch.cat([context, hidden_k[torch.arange(batch, device=best.device), best][:, None, :]], dim=1)
        context_mask = torch.cat([context_mask, context_mask.new_ones((batch, 1))], dim=1)
        mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=1)
        ids = torch.cat([ids, tokens[:, None]], dim=1)
