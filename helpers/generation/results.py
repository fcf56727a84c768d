"""What a generation returns: tokens with log-probabilities, timings, the result object."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from .settings import GenerationSettings


@dataclass
class TokenInfo:
    """One generated token, with the model's log-probability of it and its most likely alternatives: what a
    decoding backend yields for each row at each step, and what a result's `tokens` list holds."""

    id: int
    text: str
    logprob: float | None = None  # None: not computed (not asked for, or the backend scores afterwards)
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (id, text, logprob), most likely first

    @classmethod
    def decoded(cls, tokenizer: PreTrainedTokenizerBase, token_id: int, logprob: float | None = None,
                top: Iterable[tuple[int, float]] = ()) -> TokenInfo:
        """The token and its alternatives ((id, logprob) pairs) with their text."""
        return cls(token_id, tokenizer.decode([token_id]), logprob, [(i, tokenizer.decode([i]), lp) for i, lp in top])


def mean_logprob(tokens: Sequence[TokenInfo]) -> float | None:
    """The mean log-probability per token of those that carry one; None where none does."""
    values = [t.logprob for t in tokens if t.logprob is not None]
    return sum(values) / len(values) if values else None


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
    finish_reason: str  # 'length', 'eos', 'stop' (a stop string), 'stopped' (by the user), 'context' (2048 reached),
    # 'error' (the backend failed midway, e.g. a server's connection broke: the text up to there)
    timings: Timings
    settings: GenerationSettings
    method: str
    tokens: list[TokenInfo] | None = None  # with logprobs=True
    notes: list[str] = field(default_factory=list)

    @property
    def full_text(self) -> str:
        return self.prompt + self.text

    @property
    def mean_logprob(self) -> float | None:
        """The mean log-probability per new token; None without log-probabilities (logprobs=False)."""
        return mean_logprob(self.tokens or [])

    def summary(self, separator: str = ", ") -> str:
        """The one status line of a finished run: tokens, time, speed, first token, mode, seed, finish."""
        t = self.timings
        first = f"{t.time_to_first_token:.2f} s" if t.time_to_first_token is not None else "n/a"
        parts = [f"{t.new_tokens} tokens in {t.total_seconds:.2f} s", f"{t.tokens_per_second:.1f} tokens/s",
                 f"first token after {first}", self.settings.mode]
        if self.settings.samples:
            parts.append(f"seed {self.settings.seed}")
        parts.append(f"finished: {self.finish_reason}")
        return separator.join(parts)

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
