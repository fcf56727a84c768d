"""One call of generate(): the method chosen, tokens stepped, text assembled, results built."""

from __future__ import annotations

import contextlib
import queue
import random
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from transformers import OPTForCausalLM, PreTrainedTokenizerBase, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..environment import free_memory_bytes
from ..errors import MemoryBudgetError, ModelUnloadedError, PromptError, SettingsError
from ..memory.bytes import generation_bytes
from ..opt.model_state import check_loaded, is_unloaded, model_device
from ..opt.sizes import EOS_TOKEN_ID, size_from_config
from ..opt.tokenizer import Prompt, _is_token_ids, encode_prompt
from ..units import human_bytes
from .backends.cpu_engine import supported
from .backends.hf import _GLOBAL_RNG, _StopWhenSet, _TokenQueue
from .backends.loops import decode
from .backends.tutorial import tutorial_greedy_steps
from .request import METHODS, _fit_context, _pad_left, _settings
from .results import GenerationResult, Timings, TokenInfo
from .settings import GenerationSettings, check_top_logprobs
from .text import _RowText

_METHOD_ALIASES = {"seed": "tutorial"}  # the name the tutorial's loop had first, still accepted
_STEPS_CARRY_LOGPROBS = ("cached", "cpu-fast")  # their steps hold the log-probabilities: nothing to score afterwards


class _Run:
    """One call of generate()/stream(): prompts encoded, the method chosen, tokens turned into text."""

    def __init__(self, model: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                 settings: GenerationSettings, logprobs: bool, top_logprobs: int, truncate: bool, method: str):
        check_loaded(model)
        method = _METHOD_ALIASES.get(method, method)
        if method not in METHODS:
            raise SettingsError(f"Unknown method '{method}'. Use one of: {', '.join(METHODS)}.")
        if not prompts:
            raise PromptError("No prompt was given: pass a string or a non-empty list of strings.")
        check_top_logprobs(top_logprobs)
        self.model, self.tokenizer, self.prompts = model, tokenizer, prompts
        self.logprobs = logprobs or top_logprobs > 0
        self.top_logprobs = top_logprobs
        self.notes: list[str] = []
        limit = model.config.max_position_embeddings
        self.prompt_ids = []
        for prompt in prompts:
            ids, note = _fit_context(encode_prompt(tokenizer, prompt), limit, truncate)
            self.prompt_ids.append(ids)
            if note:
                self.notes.append(note)
                warnings.warn(note, stacklevel=3)
        self.max_new = min(settings.max_new_tokens, limit - max(len(ids) for ids in self.prompt_ids))
        if self.max_new < settings.max_new_tokens:
            self.notes.append(
                f"Only {self.max_new} new tokens fit after this prompt in OPT's {limit} positions "
                f"(asked for {settings.max_new_tokens}); generation stops there."
            )
        if settings.mode in ("sample", "beam-sample") and settings.seed is None:
            settings = settings.replace(seed=random.randrange(2**31))  # recorded so the run can be repeated
        self.settings = settings
        self.method = self._choose_method(method)
        self._check_working_memory()
        self.rows = [_RowText(tokenizer, settings.stop) for _ in prompts]
        self.stop_event = threading.Event()
        self.time_to_first_token: float | None = None
        self.total_seconds = 0.0
        self.completed = False
        self._pending_step = None
        self.on_step: Callable[[], None] | None = None

    def _check_working_memory(self) -> None:
        """Refuse, before the first step, a generation whose cache and working memory (the planner's
        arithmetic) exceed the memory free on the model's device: an error, not the kernel's OOM kill."""
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

    def _choose_method(self, method: str) -> str:
        """'auto' is the fastest correct method for this device and batch (see the README's Speed section)."""
        mode, batch = self.settings.mode, len(self.prompt_ids)
        device = model_device(self.model).type
        if method == "auto":
            if mode.startswith("beam"):
                return "hf"
            if mode == "contrastive":
                return "cached"
            if device == "cpu" and supported(self.model, batch):
                return "cpu-fast"
            if device == "cuda" and batch == 1 and getattr(self.model, "hf_quantizer", None) is None:
                return "static"
            return "cached"
        if method == "tutorial" and mode != "greedy":
            raise SettingsError("The tutorial's loop only does greedy decoding: use do_sample=False, or method='auto'.")
        if method in ("cached", "cpu-fast", "static") and mode.startswith("beam"):
            raise SettingsError(f"method '{method}' does not do beam search: use method='auto' or 'hf' with num_beams > 1.")
        if method in ("hf", "static") and mode == "contrastive":
            raise SettingsError(
                "transformers 5 no longer ships contrastive search (it needs remote hub code); "
                "use method='auto' or 'cached', which implement it here."
            )
        if method == "cpu-fast" and (mode == "contrastive" or not supported(self.model, batch)):
            raise SettingsError(
                "method 'cpu-fast' runs one prompt of an fp32 model on the CPU with greedy or sampling decoding; "
                "use method='auto' for anything else."
            )
        return method

    def _token_ids(self) -> Iterator[list[int | None]]:
        """The new token of every row, step by step (None: no token for that row at this step)."""
        device = model_device(self.model)
        if self.method in ("cached", "cpu-fast"):
            ids, mask = _pad_left(self.prompt_ids, device)
            generator = None
            if self.settings.mode == "sample":
                generator = torch.Generator(device=device).manual_seed(self.settings.seed)
            for step in decode(self.model, ids, mask, self.settings, max_new_tokens=self.max_new,
                               generator=generator, logprobs=self.logprobs, top_logprobs=self.top_logprobs,
                               finished=self._finished_rows, engine=self.method == "cpu-fast"):
                self._pending_step = step
                yield step.tokens.tolist()
            return
        self._pending_step = None
        if self.method == "tutorial":  # the tutorial's loop has no batch: rows one after another, each streamed
            for row, ids in enumerate(self.prompt_ids):
                for token in tutorial_greedy_steps(self.model, ids, self.max_new, EOS_TOKEN_ID):
                    yield [token if i == row else None for i in range(len(self.prompt_ids))]
            return
        if self.settings.mode.startswith("beam"):  # beams are final only at the end: nothing to stream
            columns = self._hf_generate(device)
            for step in range(max(len(c) for c in columns)):
                yield [c[step] if step < len(c) else None for c in columns]
            return
        yield from self._hf_streamed(device)

    def _hf_generate(self, device: torch.device, streamer: BaseStreamer | None = None) -> list[list[int]]:
        """`model.generate` with these settings ('static': with a static cache, compiled on CUDA)."""
        ids, mask = _pad_left(self.prompt_ids, device)
        config = self.settings.generation_config()
        config.max_new_tokens = self.max_new
        extra = {}
        if self.method == "static":
            extra["cache_implementation"] = "static"
            warm = self.model.__dict__.setdefault("_helpers_static_shapes", set())
            if device.type == "cuda" and ids.shape[0] not in warm:
                warm.add(ids.shape[0])
                self.notes.append("First static-cache call for this model and batch size on the GPU: the decoding step "
                                  "is compiled once now (this call is slow); later calls reuse it.")
        samples = self.settings.mode in ("sample", "beam-sample")
        with _GLOBAL_RNG if samples else contextlib.nullcontext(), torch.inference_mode():
            if self.settings.seed is not None:
                torch.manual_seed(self.settings.seed)
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                      tokenizer=self.tokenizer if self.settings.stop else None, streamer=streamer,
                                      stopping_criteria=StoppingCriteriaList([_StopWhenSet(self.stop_event, None if streamer else self.on_step)]),
                                      **extra)
        return out[:, ids.shape[1]:].tolist()

    def _hf_streamed(self, device: torch.device) -> Iterator[list[int]]:
        """`model.generate` in a worker thread, its tokens passed on as they come. The thread always
        ends before this returns: a stop, an early exit or an error first sets the stop event."""
        tokens: queue.Queue = queue.Queue()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self._hf_generate(device, _TokenQueue(tokens))
            except BaseException as exc:  # handed to the consumer below
                failure.append(exc)
            finally:
                tokens.put(None)

        worker = threading.Thread(target=work, name="helpers-generate", daemon=True)
        worker.start()
        drained = False
        try:
            while (step := tokens.get()) is not None:
                yield step
            drained = True
        finally:
            if not drained:  # the consumer left early: end model.generate within one step
                self.stop_event.set()
            worker.join()
        if failure:
            raise failure[0]

    def _finished_rows(self) -> torch.Tensor | None:
        if self.stop_event.is_set():
            return torch.ones(len(self.rows), dtype=torch.bool)
        if self.settings.stop:
            return torch.tensor([row.finish is not None for row in self.rows])
        return None

    def _info(self, row: int, token_id: int) -> TokenInfo | None:
        step = self._pending_step
        if not self.logprobs or step is None:
            return None
        decode_one = self.tokenizer.decode
        top = []
        if step.top_ids is not None:
            top = [(i, decode_one([i]), lp) for i, lp in zip(step.top_ids[row].tolist(), step.top_logprobs[row].tolist())]
        return TokenInfo(token_id, decode_one([token_id]), float(step.logprobs[row]), top)

    def pieces(self) -> Iterator[tuple[int, str]]:
        """(row, text that became final) as tokens arrive; afterwards `results()` holds everything."""
        start = time.perf_counter()
        steps = self._token_ids()
        try:
            for tokens in steps:
                if is_unloaded(self.model):  # unloaded mid-stream (another cell, thread or widget): stop, say so
                    raise ModelUnloadedError.midway()
                if self.time_to_first_token is None:
                    self.time_to_first_token = time.perf_counter() - start
                for row, token in enumerate(tokens):
                    state = self.rows[row]
                    if token is None or state.finish is not None:
                        continue
                    piece = state.add(token, self._info(row, token))
                    if piece:
                        yield row, piece
                if self.on_step is not None:  # e.g. the playground handles a waiting Stop click here
                    self.on_step()
                if self.stop_event.is_set():
                    break
        except Exception:
            if is_unloaded(self.model):  # whatever failed, it failed because the tensors went mid-step
                raise ModelUnloadedError.midway() from None
            raise
        finally:
            steps.close()
            self.total_seconds = time.perf_counter() - start
        for row, state in enumerate(self.rows):
            if state.finish is None:
                if self.stop_event.is_set():
                    state.finish = "stopped"
                elif self.max_new < self.settings.max_new_tokens and len(state.ids) >= self.max_new:
                    state.finish = "context"
                else:
                    state.finish = "length"
            piece = state.flush()
            if piece:
                yield row, piece
        if self.logprobs and self.method not in _STEPS_CARRY_LOGPROBS:
            self._score_afterwards()
        self.completed = True

    def _score_afterwards(self) -> None:
        """Log-probabilities for methods that do not expose their steps: one teacher-forced pass."""
        device = model_device(self.model)
        for row, state in enumerate(self.rows):
            if not state.ids:
                continue
            ids = torch.tensor([self.prompt_ids[row] + state.ids], device=device)
            with torch.inference_mode():
                logits = self.model(ids, use_cache=False).logits[0, len(self.prompt_ids[row]) - 1: -1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            chosen = logprobs.gather(1, torch.tensor(state.ids, device=device)[:, None]).squeeze(1).tolist()
            tops = logprobs.topk(self.top_logprobs, dim=-1) if self.top_logprobs else None
            state.tokens = []
            for i, token in enumerate(state.ids):
                top = []
                if tops is not None:
                    top = [(t, self.tokenizer.decode([t]), lp)
                           for t, lp in zip(tops.indices[i].tolist(), tops.values[i].tolist())]
                state.tokens.append(TokenInfo(token, self.tokenizer.decode([token]), chosen[i], top))

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
        method: 'auto' picks the fastest correct method for the device and batch: 'cpu-fast' (the lean
            CPU engine) for one prompt of an fp32 model on the CPU, 'static' (`model.generate` with a
            static cache, compiled on CUDA) for one prompt on a GPU, 'hf' (`model.generate`) for beam
            search, 'cached' (the cached loop) otherwise. 'tutorial' ('seed' also works) is the 2022
            tutorial's loop (greedy only).

    Returns:
        A `GenerationResult` for a string prompt; a list of them for a list of prompts.

    Raises:
        SettingsError: impossible settings.
        PromptError: no prompt, or one that does not fit the context (without truncate).
        ModelUnloadedError: the model was unloaded.
    """
    single = isinstance(prompt, str) or _is_token_ids(prompt)
    prompts = [prompt] if single else list(prompt)
    run = _Run(model, tokenizer, prompts, _settings(settings, changes), logprobs, top_logprobs, truncate, method)
    for _ in run.pieces():
        pass
    results = run.results()
    return results[0] if single else results
