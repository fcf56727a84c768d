"""generate(): a request prepared (`prepare`), a backend's steps turned into text and results (`GenerationRun`)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence

from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from ..errors import ModelUnloadedError
from ..opt.model_state import check_loaded, is_unloaded
from ..opt.tokenizer import Prompt, is_token_ids
from .backends.base import Backend, DecodeJob, RunControl, Step
from .backends.registry import check_method, choose_backend
from .request import check_working_memory, encode_prompts, room_for_new_tokens, settings_with
from .results import GenerationResult, Timings, TokenInfo
from .scoring import scored_tokens
from .settings import GenerationSettings, check_top_logprobs
from .text import RowText


def prepare(model: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt],
            settings: GenerationSettings, *, logprobs: bool = False, top_logprobs: int = 0, truncate: bool = False,
            method: str = "auto", control: RunControl | None = None) -> tuple[DecodeJob, Backend]:
    """Everything before the first step, in order: the checks that need no prompt, the prompts encoded and
    fitted, the room for new tokens, the seed drawn, the backend chosen, the memory checked."""
    check_loaded(model)
    check_method(method)  # a wrong name is known before any prompt is encoded
    check_top_logprobs(top_logprobs)
    limit = model.config.max_position_embeddings
    prompt_ids, notes = encode_prompts(tokenizer, prompts, limit, truncate, settings.max_new_tokens)
    for note in notes:
        warnings.warn(note, stacklevel=3)  # at the caller of generate() or stream()
    max_new, note = room_for_new_tokens(settings, prompt_ids, limit)
    notes += [note] if note else []
    settings = settings.with_seed_drawn()
    backend = choose_backend(method, model, settings, len(prompt_ids))
    check_working_memory(model, settings, prompt_ids, max_new)
    job = DecodeJob(model, tokenizer, prompt_ids, settings, max_new, logprobs or top_logprobs > 0, top_logprobs,
                    control or RunControl(), notes)
    return job, backend


class GenerationRun:
    """One call of generate()/stream(): a backend's steps turned into each row's text, then into results."""

    def __init__(self, job: DecodeJob, backend: Backend, prompts: list[Prompt]):
        self.job, self.backend, self.prompts = job, backend, prompts
        self.settings, self.control = job.settings, job.control
        keep = job.logprobs and backend.carries_logprobs  # otherwise scored afterwards
        self.rows = [RowText(job.tokenizer, job.settings.stop, keep) for _ in prompts]
        self.time_to_first_token: float | None = None
        self.total_seconds = 0.0
        self.completed = False

    def _take(self, step: Step) -> Iterator[tuple[int, str]]:
        """The rows' new tokens into their text; (row, text that became final)."""
        for row, token in enumerate(step):
            state = self.rows[row]
            if token is None or state.finish is not None:
                continue
            piece = state.add(token)
            if state.finish is not None:
                self.control.finish_row(row)  # the loop feeds it no further token
            if piece:
                yield row, piece

    def pieces(self) -> Iterator[tuple[int, str]]:
        """(row, text that became final) as tokens arrive; afterwards `results()` holds everything."""
        start = time.perf_counter()
        steps = self.backend.steps(self.job)
        try:
            for step in steps:  # the backend ends its steps within one step of a Stop
                if is_unloaded(self.job.model):  # unloaded mid-stream (another cell, thread or widget): stop, say so
                    raise ModelUnloadedError.midway()
                if self.time_to_first_token is None:
                    self.time_to_first_token = time.perf_counter() - start
                yield from self._take(step)
                self.control.after_step()  # e.g. the playground handles a waiting Stop click here
        except Exception:
            for state in self.rows:  # the text so far stays; its finish says it broke off
                state.finish = state.finish or "error"
            if is_unloaded(self.job.model):  # whatever failed, it failed because the tensors went mid-step
                raise ModelUnloadedError.midway() from None
            raise
        finally:
            steps.close()
            self.total_seconds = time.perf_counter() - start
        for row, state in enumerate(self.rows):
            piece = state.end(self._finish_reason(state))
            if piece:
                yield row, piece
        if self.job.logprobs and not self.backend.carries_logprobs:
            self._score_afterwards()
        self.completed = True

    def _finish_reason(self, state: RowText) -> str:
        if self.control.stopped:
            return "stopped"
        if self.job.max_new_tokens < self.settings.max_new_tokens and len(state.ids) >= self.job.max_new_tokens:
            return "context"
        return "length"

    def _score_afterwards(self) -> None:
        """Log-probabilities for a backend whose steps do not carry them: one teacher-forced pass a row."""
        for row, state in enumerate(self.rows):
            if state.ids:
                prompt = self.job.prompt_ids[row]
                scored = scored_tokens(self.job.model, prompt + state.ids, start=len(prompt),
                                       top=self.job.top_logprobs)
                state.scored([TokenInfo.decoded(self.job.tokenizer, token, logprob, top)
                              for token, (logprob, top) in zip(state.ids, scored)])

    def _prompt_text(self, row: int) -> str:
        prompt = self.prompts[row]
        if isinstance(prompt, str):
            return prompt
        return self.job.tokenizer.decode(self.job.prompt_ids[row], skip_special_tokens=True,
                                         clean_up_tokenization_spaces=False)

    def results(self) -> list[GenerationResult]:
        return [
            GenerationResult(
                prompt=self._prompt_text(row),
                text=state.text,
                prompt_token_ids=self.job.prompt_ids[row],
                token_ids=list(state.ids),
                finish_reason=state.finish or ("stopped" if self.control.stopped else "length"),
                timings=Timings(self.total_seconds, len(state.ids) + (state.finish == "eos"), self.time_to_first_token),
                settings=self.settings,
                method=self.backend.name,
                tokens=list(state.tokens) if self.job.logprobs else None,
                notes=list(self.job.notes),
            )
            for row, state in enumerate(self.rows)
        ]


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
            'tutorial'), or 'auto': the first of them that runs these settings on this model and batch and is
            meant to (the CPU engine for one fp32 prompt on the CPU, a static cache for one prompt on a GPU,
            the cached loop for batches, `model.generate` for beams).

    Returns:
        A `GenerationResult` for a string prompt; a list of them for a list of prompts.

    Raises:
        SettingsError: impossible settings.
        PromptError: no prompt, or one that does not fit the context (without truncate).
        ModelUnloadedError: the model was unloaded.
    """
    single = isinstance(prompt, str) or is_token_ids(prompt)
    prompts = [prompt] if single else list(prompt)
    job, backend = prepare(model, tokenizer, prompts, settings_with(settings, changes), logprobs=logprobs,
                           top_logprobs=top_logprobs, truncate=truncate, method=method)
    run = GenerationRun(job, backend, prompts)
    for _ in run.pieces():
        pass
    results = run.results()
    return results[0] if single else results
