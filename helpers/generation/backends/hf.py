"""transformers' `model.generate` as a backend (plain, or with a static cache): streamed, or beams at the end."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ...opt.model_state import model_device
from .base import DecodeJob, RunControl, Step

# model.generate samples from torch's one process-wide generator (seeded per run), so sampling runs through
# it take turns: a seeded result must not depend on what else is running. The cached loop and the CPU
# engine sample from a generator of their own and need no turn.
_GLOBAL_RNG = threading.Lock()


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


class _StopWhenStopped(StoppingCriteria):
    """Ends `model.generate` within one step once the run is stopped. Beam search then keeps the best beam it
    holds at that step (a stopping criterion met by every beam finishes them all, as the length limit does)."""

    def __init__(self, control: RunControl, in_consumer: bool):
        self.control, self.in_consumer = control, in_consumer

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.in_consumer:  # a beam search runs in the consuming thread: its steps are the caller's steps
            self.control.after_step()
        return torch.full((input_ids.shape[0],), self.control.stopped, dtype=torch.bool, device=input_ids.device)


def generate_steps(job: DecodeJob) -> Iterator[Step]:
    """`model.generate`'s tokens: streamed step by step, or, for beam search, once the beams are final."""
    return _steps(job, static=False)


def static_cache_steps(job: DecodeJob) -> Iterator[Step]:
    """`model.generate` with a static cache (which transformers compiles on CUDA), streamed."""
    return _steps(job, static=True)


def _steps(job: DecodeJob, static: bool) -> Iterator[Step]:
    if job.settings.mode.startswith("beam"):  # beams are final only at the end (or at Stop): nothing to stream
        columns = _generate(job, static, None)
        for step in range(max(len(c) for c in columns)):
            yield [job.token(c[step]) if step < len(c) else None for c in columns]
        return
    yield from _streamed(job, static)


def _generate(job: DecodeJob, static: bool, streamer: BaseStreamer | None) -> list[list[int]]:
    """One `model.generate` call with the job's settings; the new tokens of each row."""
    device = model_device(job.model)
    ids, mask = job.padded(device)
    config = job.settings.generation_config()
    config.max_new_tokens = job.max_new_tokens
    extra = {}
    if static:
        extra["cache_implementation"] = "static"
        warm = job.model.__dict__.setdefault("_helpers_static_shapes", set())
        if device.type == "cuda" and ids.shape[0] not in warm:
            warm.add(ids.shape[0])
            job.notes.append("First static-cache call for this model and batch size on the GPU: the decoding step "
                             "is compiled once now (this call is slow); later calls reuse it.")
    samples = job.settings.samples
    stop = _StopWhenStopped(job.control, in_consumer=streamer is None)
    with _GLOBAL_RNG if samples else contextlib.nullcontext(), torch.inference_mode():
        if job.settings.seed is not None:
            torch.manual_seed(job.settings.seed)
        out = job.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                 tokenizer=job.tokenizer if job.settings.stop else None, streamer=streamer,
                                 stopping_criteria=StoppingCriteriaList([stop]), **extra)
    return out[:, ids.shape[1]:].tolist()


def _streamed(job: DecodeJob, static: bool) -> Iterator[Step]:
    """`model.generate` in a worker thread, its tokens passed on as they come. The thread always
    ends before this returns: an early exit or an error first stops the run."""
    tokens: queue.Queue = queue.Queue()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            _generate(job, static, _TokenQueue(tokens))
        except BaseException as exc:  # handed to the consumer below
            failure.append(exc)
        finally:
            tokens.put(None)

    worker = threading.Thread(target=work, name="helpers-generate", daemon=True)
    worker.start()
    drained = False
    try:
        while (step := tokens.get()) is not None:
            yield [job.token(token) for token in step]
            if job.control.stopped:  # what the worker ran ahead of the consumer is not shown after a Stop
                break
        else:
            drained = True
    finally:
        if not drained:  # the consumer left early or stopped: end model.generate within one step
            job.control.stop()
        worker.join()
    if failure:
        raise failure[0]
