"""stream(): a TextStream yielding the text as it is produced."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from ..errors import PromptError
from ..opt.tokenizer import Prompt, is_token_ids
from .backends.base import RunControl
from .request import settings_with
from .results import GenerationResult, TokenInfo
from .run import GenerationRun, prepare
from .settings import GenerationSettings


class TextStream:
    """Text pieces of one generation as they are produced. Iterate it; `stop()` (from any thread)
    ends it within one decoding step; afterwards `result` holds the `GenerationResult`.

        s = stream(model, tokenizer, "Once upon a time")
        for piece in s:
            print(piece, end="", flush=True)
        s.result.timings.tokens_per_second
    """

    def __init__(self, run: GenerationRun):
        self._run = run
        self._pieces = run.pieces()
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for _, piece in self._pieces:
                yield piece
        finally:
            if not self._run.completed:  # the consumer left early: that is a stop
                self._run.control.stop()
            self._pieces.close()
            self.result = self._run.results()[0]

    def stop(self) -> None:
        self._run.control.stop()

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
    if not (isinstance(prompt, str) or is_token_ids(prompt)):
        raise PromptError("stream() takes one prompt (a string or a list of token ids); use generate() for a batch.")
    job, backend = prepare(model, tokenizer, [prompt], settings_with(settings, changes), logprobs=logprobs,
                           top_logprobs=top_logprobs, truncate=truncate, method=method,
                           control=RunControl(on_step))
    return TextStream(GenerationRun(job, backend, [prompt]))
