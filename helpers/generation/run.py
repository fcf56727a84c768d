"""One call of generate(): prompts encoded and fitted, a backend chosen, its steps turned into text and results."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from ..environment import free_memory_bytes
from ..errors import MemoryBudgetError, ModelUnloadedError, PromptError
from ..memory.bytes import generation_bytes
from ..opt.model_state import check_loaded, is_unloaded, model_device
from ..opt.sizes import size_from_config
from ..opt.tokenizer import Prompt, encode_prompt, is_token_ids
from ..serving.model import is_served
from ..units import human_bytes
from .backends.base import DecodeJob, DecodeStep
from .backends.registry import check_method, choose_backend
from .request import fit_context, settings_with
from .results import GenerationResult, Timings, TokenInfo
from .scoring import scored_tokens
from .settings import GenerationSettings, check_top_logprobs
from .text import RowText


class GenerationRun:
    """One call of generate()/stream(): prompts encoded, a backend chosen, its steps turned into text."""

    def __init__(self, model: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt],
                 settings: GenerationSettings, logprobs: bool, top_logprobs: int, truncate: bool, method: str,
                 on_step: Callable[[], None] | None = None):
        check_loaded(model)
        check_method(method)  # a wrong name is known before any prompt is encoded
        if not prompts:
            raise PromptError("No prompt was given: pass a string or a non-empty list of strings.")
        check_top_logprobs(top_logprobs)
        self.model, self.tokenizer, self.prompts = model, tokenizer, prompts
        self.logprobs = logprobs or top_logprobs > 0
        self.top_logprobs = top_logprobs
        self.notes: list[str] = []
        self.prompt_ids = self._encoded(prompts, truncate)
        limit = model.config.max_position_embeddings
        self.max_new = min(settings.max_new_tokens, limit - max(len(ids) for ids in self.prompt_ids))
        if self.max_new < settings.max_new_tokens:
            self.notes.append(
                f"Only {self.max_new} new tokens fit after this prompt in OPT's {limit} positions "
                f"(asked for {settings.max_new_tokens}); generation stops there."
            )
        self.settings = settings = settings.with_seed_drawn()
        self.backend = choose_backend(method, model, settings, len(self.prompt_ids))
        self.method = self.backend.name
        self._check_working_memory()
        self.rows = [RowText(tokenizer, settings.stop) for _ in prompts]
        self.stop_event = threading.Event()
        self.on_step = on_step  # called in the consuming thread after every step (the playground's Stop)
        self.time_to_first_token: float | None = None
        self.total_seconds = 0.0
        self.completed = False

    def _encoded(self, prompts: list[Prompt], truncate: bool) -> list[list[int]]:
        limit = self.model.config.max_position_embeddings
        encoded = []
        for prompt in prompts:
            ids, note = fit_context(encode_prompt(self.tokenizer, prompt), limit, truncate)
            encoded.append(ids)
            if note:
                self.notes.append(note)
                warnings.warn(note, stacklevel=4)
        return encoded

    def _check_working_memory(self) -> None:
        """Refuse, before the first step, a generation whose cache and working memory (the planner's
        arithmetic) exceed the memory free on the model's device: an error, not the kernel's OOM kill."""
        if is_served(self.model):  # its server holds the cache, and says when it is full
            return
        mode, prompts = self.settings.mode, len(self.prompt_ids)
        per_prompt = self.settings.num_beams if mode.startswith("beam") else 1
        if mode == "contrastive":
            per_prompt = self.settings.top_k  # every candidate runs through the model at each step
        need = generation_bytes(size_from_config(self.model.config), max(len(ids) for ids in self.prompt_ids),
                                self.max_new, prompts * per_prompt, self.model.dtype)
        device = model_device(self.model)
        free = free_memory_bytes(device)
        if free is not None and need > free:
            rows = f"{prompts} prompt(s) x {per_prompt} {'beams' if mode.startswith('beam') else 'candidates'}" \
                if per_prompt > 1 else f"{prompts} prompt(s)"
            raise MemoryBudgetError(
                f"This generation would need about {human_bytes(need)} for its key/value cache and working memory "
                f"({rows}, {self.max_new} new tokens), more than the {human_bytes(free)} free on {device}. Use "
                "fewer beams, fewer prompts at once or fewer new tokens.")

    def _job(self) -> DecodeJob:
        return DecodeJob(self.model, self.tokenizer, self.prompt_ids, self.settings, self.max_new, self.logprobs,
                         self.top_logprobs, self.stop_event, self._finished_rows, self.on_step, self.notes)

    def _finished_rows(self) -> torch.Tensor | None:
        if self.stop_event.is_set():
            return torch.ones(len(self.rows), dtype=torch.bool)
        if self.settings.stop:
            return torch.tensor([row.finish is not None for row in self.rows])
        return None

    def _token_info(self, token_id: int, logprob: float, top: list[tuple[int, float]]) -> TokenInfo:
        decode_one = self.tokenizer.decode
        return TokenInfo(token_id, decode_one([token_id]), logprob, [(i, decode_one([i]), lp) for i, lp in top])

    def _take(self, step: DecodeStep) -> Iterator[tuple[int, str]]:
        """The rows' new tokens into their text; (row, text that became final)."""
        for row, token in enumerate(step.tokens):
            state = self.rows[row]
            if token is None or state.finish is not None:
                continue
            info = None
            if self.logprobs and step.logprobs is not None:
                info = self._token_info(token, step.logprobs[row], step.top[row] if step.top else [])
            piece = state.add(token, info)
            if piece:
                yield row, piece

    def pieces(self) -> Iterator[tuple[int, str]]:
        """(row, text that became final) as tokens arrive; afterwards `results()` holds everything."""
        start = time.perf_counter()
        steps = self.backend.steps(self._job())
        try:
            for step in steps:
                if is_unloaded(self.model):  # unloaded mid-stream (another cell, thread or widget): stop, say so
                    raise ModelUnloadedError.midway()
                if self.time_to_first_token is None:
                    self.time_to_first_token = time.perf_counter() - start
                yield from self._take(step)
                if self.on_step is not None:  # e.g. the playground handles a waiting Stop click here
                    self.on_step()
                if self.stop_event.is_set():
                    break
        except Exception:
            for state in self.rows:  # the text so far stays; its finish says it broke off
                state.finish = state.finish or "error"
            if is_unloaded(self.model):  # whatever failed, it failed because the tensors went mid-step
                raise ModelUnloadedError.midway() from None
            raise
        finally:
            steps.close()
            self.total_seconds = time.perf_counter() - start
        for row, state in enumerate(self.rows):
            if state.finish is None:
                state.finish = self._finish_reason(state)
            piece = state.flush()
            if piece:
                yield row, piece
        if self.logprobs and not self.backend.carries_logprobs:
            self._score_afterwards()
        self.completed = True

    def _finish_reason(self, state: RowText) -> str:
        if self.stop_event.is_set():
            return "stopped"
        if self.max_new < self.settings.max_new_tokens and len(state.ids) >= self.max_new:
            return "context"
        return "length"

    def _score_afterwards(self) -> None:
        """Log-probabilities for a backend whose steps do not carry them: one teacher-forced pass a row."""
        for row, state in enumerate(self.rows):
            if state.ids:
                prompt = self.prompt_ids[row]
                scored = scored_tokens(self.model, prompt + state.ids, start=len(prompt), top=self.top_logprobs)
                state.tokens = [self._token_info(token, logprob, top)
                                for token, (logprob, top) in zip(state.ids, scored)]

    def _prompt_text(self, row: int) -> str:
        prompt = self.prompts[row]
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.decode(self.prompt_ids[row], skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def results(self) -> list[GenerationResult]:
        out = []
        for row, state in enumerate(self.rows):
            out.append(
                GenerationResult(
                    prompt=self._prompt_text(row),
                    text=state.text,
                    prompt_token_ids=self.prompt_ids[row],
                    token_ids=list(state.ids),
                    finish_reason=state.finish or ("stopped" if self.stop_event.is_set() else "length"),
                    timings=Timings(self.total_seconds, len(state.ids) + (state.finish == "eos"),
                                    self.time_to_first_token),
                    settings=self.settings,
                    method=self.method,
                    tokens=list(state.tokens) if self.logprobs else None,
                    notes=list(self.notes),
                )
            )
        return out


def generate(
    model: OPTForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt | Sequence[Prompt],
    settings: GenerationSettings | None = None,
    *,
    logprobs: bool = False,
    top_logprobs: int = 0,
    truncate: bool = False,
    method: str = "auto",
    **changes,
) -> GenerationResult | list[GenerationResult]:
    """Generate a continuation of one prompt, or of a batch of prompts (padded on the left).

    Args:
        model, tokenizer: from `load_model`.
        prompt: a string (or a list of token ids), or a list of them for a batch.
        settings: decoding settings (default: `GenerationSettings()`, nucleus sampling);
            keyword arguments change single fields: `generate(m, t, "Hi", max_new_tokens=20, do_sample=False)`.
        logprobs: record each new token's log-probability under the model.
        top_logprobs: also record the k most likely alternatives at each step (implies logprobs).
        truncate: drop the start of a prompt longer than the context instead of raising.
        method: a backend from `generation/backends/registry` ('cpu-fast', 'static', 'cached', 'hf',
            'tutorial'; 'seed' is the tutorial's old name), or 'auto': the first of them that runs these
            settings on this model and batch and is meant to (the CPU engine for one fp32 prompt on the CPU,
            a static cache for one prompt on a GPU, the cached loop for batches, `model.generate` for beams).

    Returns:
        A `GenerationResult` for a string prompt; a list of them for a list of prompts.

    Raises:
        SettingsError: impossible settings.
        PromptError: no prompt, or one that does not fit the context (without truncate).
        ModelUnloadedError: the model was unloaded.
    """
    single = isinstance(prompt, str) or is_token_ids(prompt)
    prompts = [prompt] if single else list(prompt)
    run = GenerationRun(model, tokenizer, prompts, settings_with(settings, changes), logprobs, top_logprobs, truncate,
                        method)
    for _ in run.pieces():
        pass
    results = run.results()
    return results[0] if single else results
