"""The served backend: a generation as one streamed `/v1/completions` request, its tokens as `Step`s."""

from __future__ import annotations

from collections.abc import Generator

from ...errors import ServerError, SettingsError
from ...opt.sizes import EOS_TOKEN_ID
from ...serving.answers import ServedToken, choice_tokens
from ...serving.served_model import ServedModel
from ..settings import GenerationSettings
from .base import DecodeJob, Step


def unsupported(settings: GenerationSettings) -> list[str]:
    """Settings a vLLM server cannot honour, each said with what to do (beams and contrastive search are refused
    by the registry, from the settings' mode)."""
    found = []
    if settings.typical_p != 1.0:
        found.append(f"typical_p={settings.typical_p} (vLLM has no typical sampling: set typical_p=1.0)")
    if settings.no_repeat_ngram_size:
        found.append(f"no_repeat_ngram_size={settings.no_repeat_ngram_size} (vLLM does not block repeated n-grams: "
                     "set it to 0, or use repetition_penalty)")
    return found


def completion_request(model: str, prompt_ids: list[list[int]], settings: GenerationSettings, max_new_tokens: int,
                       top_logprobs: int, logprobs: bool) -> dict:
    """The keyword arguments of `completions.create` for these prompts and settings.

    Prompts go as token ids (BOS already added once by OPT's tokenizer rule; vLLM adds nothing to ids). Several
    copies of one prompt become one prompt with `n` choices, each sampled on its own (one prompt repeated under
    one seed would otherwise repeat its text). Stop strings are sent so the server stops, with the stop string
    kept in the output, so the client cuts the text where the local backends cut it.
    """
    problems = unsupported(settings)
    if problems:
        raise SettingsError("A served model cannot do " + "; ".join(problems) + ".")
    same = len(prompt_ids) > 1 and all(ids == prompt_ids[0] for ids in prompt_ids)
    prompt: list[int] | list[list[int]] = prompt_ids[0] if same or len(prompt_ids) == 1 else prompt_ids
    extra: dict = {"return_token_ids": True, "min_tokens": settings.min_new_tokens,
                   "include_stop_str_in_output": True, "skip_special_tokens": False}
    request: dict = {"model": model, "prompt": prompt, "max_tokens": max_new_tokens, "n": len(prompt_ids) if same else 1}
    if settings.samples:
        request.update(temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed)
        extra["top_k"] = settings.top_k or -1
    else:
        request["temperature"] = 0.0
    if settings.repetition_penalty != 1.0:
        extra["repetition_penalty"] = settings.repetition_penalty
    if settings.stop:
        request["stop"] = list(settings.stop)
    if logprobs or top_logprobs:
        request["logprobs"] = top_logprobs
        extra["return_tokens_as_token_ids"] = True
    request["extra_body"] = extra
    return request


def served_steps(job: DecodeJob) -> Generator[Step, None, None]:
    """One step per token of a choice (each choice is a row); a row the server ended at EOS without sending it
    gets its EOS, so the row's finish reads 'eos' as locally. A Stop (or closing this generator) closes the
    answer, which ends the server's generation."""
    from ...serving.client import chunks  # the openai client, imported only when a served model runs

    model: ServedModel = job.model
    request = completion_request(model.name, job.prompt_ids, job.settings, job.max_new_tokens, job.top_logprobs,
                                 job.logprobs)
    job.notes.append(f"Served by {model.url} (model '{model.name}').")
    rows = len(job.prompt_ids)
    ended, finished = [False] * rows, [False] * rows
    for chunk in chunks(model.connection, request):
        for choice in chunk.choices:
            row = choice.index
            for token in choice_tokens(choice, job.top_logprobs, model.url):
                ended[row] = token.id == EOS_TOKEN_ID
                yield _step(job, rows, row, token)
                if job.control.stopped:
                    return  # leaving the loop closes the stream
            finished[row] = finished[row] or choice.finish_reason is not None
            if choice.finish_reason == "stop" and not ended[row]:
                ended[row] = True
                yield _step(job, rows, row, ServedToken(EOS_TOKEN_ID))
    if not all(finished):  # vLLM ends every choice with its finish reason: this answer was cut off
        raise ServerError(f"The answer from {model.url} ended before the server said it was finished: the "
                          "connection or the server broke off. The text received so far is kept.")


def _step(job: DecodeJob, rows: int, row: int, token: ServedToken) -> Step:
    """The one adapter between the server's tokens and the backends' step type."""
    step: Step = [None] * rows
    step[row] = job.token(token.id, token.logprob, token.top)
    return step
