"""Generating text: `generate()` for a prompt or a batch, `stream()` as it is produced; results carry
the text, the token ids, optional per-token log-probabilities and timings."""

from __future__ import annotations

import contextlib
import queue
import random
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import OPTForCausalLM, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .cpu_engine import supported
from .decoding import decode, tutorial_greedy_steps
from .environment import free_memory_bytes
from .errors import MemoryBudgetError, ModelUnloadedError, PromptError, SettingsError
from .models import BOS_TOKEN_ID, EOS_TOKEN_ID, PAD_TOKEN_ID, human_bytes, size_from_config
from .opt.model_state import check_loaded, is_unloaded, model_device
from .planner import generation_bytes
from .settings import PRESETS, GenerationSettings, check_top_logprobs

__all__ = [
    "GenerationResult", "GenerationSettings", "PRESETS", "TextStream", "Timings", "TokenInfo",
    "encode_prompt", "generate", "stream",
]

METHODS = ("auto", "cached", "cpu-fast", "static", "hf", "tutorial")
_METHOD_ALIASES = {"seed": "tutorial"}  # the name the tutorial's loop had first, still accepted
_STEPS_CARRY_LOGPROBS = ("cached", "cpu-fast")  # their steps hold the log-probabilities: nothing to score afterwards
# model.generate samples from torch's one process-wide generator (seeded per run), so sampling runs through
# it take turns: a seeded result must not depend on what else is running. The cached loop and the CPU
# engine sample from a generator of their own and need no turn.
_GLOBAL_RNG = threading.Lock()


@dataclass
class TokenInfo:
    """One generated token, with the model's log-probability of it and its most likely alternatives."""

    id: int
    text: str
    logprob: float | None = None
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (id, text, logprob), most likely first


@dataclass
class Timings:
    """Wall-clock seconds. Time to first token covers tokenization, the prompt's forward pass and the
    first pick; tokens per second counts every new token over the whole time."""

    total_seconds: float
    new_tokens: int
    time_to_first_token: float | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.total_seconds if self.total_seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float | None:
        """Tokens per second after the first one: the steady decoding speed."""
        if self.time_to_first_token is None or self.new_tokens < 2:
            return None
        decode_seconds = self.total_seconds - self.time_to_first_token
        return (self.new_tokens - 1) / decode_seconds if decode_seconds > 0 else None

    def as_dict(self) -> dict:
        return {
            "total_seconds": self.total_seconds,
            "time_to_first_token": self.time_to_first_token,
            "new_tokens": self.new_tokens,
            "tokens_per_second": self.tokens_per_second,
            "decode_tokens_per_second": self.decode_tokens_per_second,
        }


@dataclass
class GenerationResult:
    """What one prompt produced. `text` is the continuation only (it stops before a stop string);
    `token_ids` are the new tokens (EOS excluded; a stop string's tokens included)."""

    prompt: str
    text: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    finish_reason: str  # 'length', 'eos', 'stop' (a stop string), 'stopped' (by the user), 'context' (2048 reached)
    timings: Timings
    settings: GenerationSettings
    method: str
    tokens: list[TokenInfo] | None = None  # with logprobs=True
    notes: list[str] = field(default_factory=list)

    @property
    def full_text(self) -> str:
        return self.prompt + self.text

    def as_dict(self) -> dict:
        data = {
            "prompt": self.prompt,
            "text": self.text,
            "prompt_token_ids": self.prompt_token_ids,
            "token_ids": self.token_ids,
            "finish_reason": self.finish_reason,
            "method": self.method,
            "settings": self.settings.as_dict(),
            "notes": self.notes,
            **self.timings.as_dict(),
        }
        if self.tokens is not None:
            data["logprobs"] = [t.logprob for t in self.tokens]
            data["top_logprobs"] = [[{"id": i, "text": s, "logprob": lp} for i, s, lp in t.top] for t in self.tokens]
        return data


Prompt = str | list[int]  # text, or token ids (to continue exactly from a point, as branches do)


def _is_token_ids(prompt) -> bool:
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    """Token ids of a prompt, starting with OPT's BOS (`</s>`, id 2) exactly once, also when the
    tokenizer adds none (the 2022 tutorial's bart-large tokenizer) or the text itself starts with '</s>'.
    A list of token ids is taken as it is (BOS added if missing)."""
    if _is_token_ids(prompt):
        vocab = len(tokenizer)
        bad = [t for t in prompt if not 0 <= t < max(vocab, 50272)]
        if bad:
            raise PromptError(f"Token ids must be between 0 and {vocab - 1}; got {bad[:3]}.")
        ids = list(prompt)
    elif isinstance(prompt, str):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PromptError(
                f"The prompt contains text that is not valid Unicode ({prompt[exc.start:exc.end]!r} at character "
                f"{exc.start}: a lone surrogate, often left by a broken copy and paste). Remove or retype it."
            ) from None
        ids = list(tokenizer(prompt, verbose=False).input_ids)
    else:
        raise PromptError(f"A prompt must be text (str) or a list of token ids, got {type(prompt).__name__}.")
    if ids[:1] != [BOS_TOKEN_ID]:
        ids = [BOS_TOKEN_ID] + ids
    while ids[1:2] == [BOS_TOKEN_ID]:
        ids.pop(1)
    return ids


def _fit_context(ids: list[int], limit: int, truncate: bool) -> tuple[list[int], str | None]:
    """Keep a prompt inside the model's positions, leaving room for at least one new token."""
    room = limit - 1
    if len(ids) <= room:
        return ids, None
    if not truncate:
        raise PromptError(
            f"The prompt is {len(ids)} tokens long, but OPT sees at most {limit} positions, and at least one "
            f"is needed for the answer. Shorten the prompt to {room} tokens or fewer, or pass truncate=True "
            "(--truncate) to keep its last part."
        )
    kept = [BOS_TOKEN_ID] + ids[len(ids) - room + 1:]
    return kept, f"The prompt was {len(ids)} tokens; its first {len(ids) - len(kept)} tokens were dropped to fit {limit} positions."


def _pad_left(rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_TOKEN_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


class _TokenQueue(BaseStreamer):
    """Receives `model.generate`'s new tokens (after the prompt) and queues them per step."""

    def __init__(self, tokens: queue.Queue):
        self.tokens, self.prompt_seen = tokens, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.tokens.put(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class _StopWhenSet(StoppingCriteria):
    """Ends `model.generate` (beam search included) within one step once the event is set."""

    def __init__(self, event: threading.Event, on_step: Callable[[], None] | None = None):
        self.event, self.on_step = event, on_step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.on_step is not None:
            self.on_step()
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _RowText:
    """The text of one sequence as tokens arrive: decoded incrementally, cut at a stop string, and
    holding back what may still turn into one (or an incomplete UTF-8 character)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: tuple[str, ...]):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.tokens: list[TokenInfo] = []
        self.text, self.emitted = "", 0
        self.finish: str | None = None

    def add(self, token_id: int, info: TokenInfo | None) -> str:
        """Take a token; return the text that became final."""
        if token_id == EOS_TOKEN_ID:
            self.finish = "eos"
            return self.flush()
        self.ids.append(token_id)
        if info is not None:
            self.tokens.append(info)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cuts = [i for i in (self.text.find(s, max(0, self.emitted - len(s))) for s in self.stop) if i >= 0]
        if cuts:
            self.text, self.finish = self.text[: min(cuts)], "stop"
            return self.flush()
        safe = len(self.text.rstrip("\ufffd"))
        for s in self.stop:
            for n in range(min(len(s) - 1, safe), 0, -1):
                if self.text[:safe].endswith(s[:n]):
                    safe = min(safe, len(self.text[:safe]) - n)
                    break
        return self._emit(safe)

    def _emit(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        piece, self.emitted = self.text[self.emitted:upto], upto
        return piece

    def flush(self) -> str:
        return self._emit(len(self.text))


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


def _settings(settings: GenerationSettings | None, changes: dict) -> GenerationSettings:
    settings = settings or GenerationSettings()
    if not isinstance(settings, GenerationSettings):
        raise SettingsError(f"settings must be a GenerationSettings, got {type(settings).__name__}.")
    return settings.replace(**changes) if changes else settings


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


class TextStream:
    """Text pieces of one generation as they are produced. Iterate it; `stop()` (from any thread)
    ends it within one decoding step; afterwards `result` holds the `GenerationResult`.

        s = stream(model, tokenizer, "Once upon a time")
        for piece in s:
            print(piece, end="", flush=True)
        s.result.timings.tokens_per_second
    """

    def __init__(self, run: _Run):
        self._run = run
        self._pieces = run.pieces()
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for _, piece in self._pieces:
                yield piece
        finally:
            if not self._run.completed:  # the consumer left early: that is a stop
                self._run.stop_event.set()
            self._pieces.close()
            self.result = self._run.results()[0]

    def stop(self) -> None:
        self._run.stop_event.set()

    @property
    def tokens(self) -> list[TokenInfo]:
        """The tokens so far, with their log-probabilities when asked for (logprobs=True)."""
        return self._run.rows[0].tokens

    @property
    def token_ids(self) -> list[int]:
        return self._run.rows[0].ids

    @property
    def settings(self) -> GenerationSettings:
        return self._run.settings

    def text(self) -> str:
        """All pieces joined (runs the generation to the end if it has not run)."""
        if self.result is None:
            for _ in self:
                pass
        return self.result.text


def stream(
    model: OPTForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt,
    settings: GenerationSettings | None = None,
    *,
    logprobs: bool = False,
    top_logprobs: int = 0,
    truncate: bool = False,
    method: str = "auto",
    on_step: Callable[[], None] | None = None,
    **changes,
) -> TextStream:
    """Like `generate` for one prompt, but returns a `TextStream` yielding text as it is produced.
    Beam search produces its text at the end (beams are only final then). `on_step()` is called in the
    consuming thread after every decoding step (beam search's too), whether or not text came of it."""
    if not (isinstance(prompt, str) or _is_token_ids(prompt)):
        raise PromptError("stream() takes one prompt (a string or a list of token ids); use generate() for a batch.")
    run = _Run(model, tokenizer, [prompt], _settings(settings, changes), logprobs, top_logprobs, truncate, method)
    run.on_step = on_step
    return TextStream(run)
