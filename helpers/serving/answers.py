"""The pieces of a streamed `/v1/completions` answer, read as OPT token ids with their log-probabilities."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ServerError

TOKEN_ID_PREFIX = "token_id:"  # how vLLM names a token with `return_tokens_as_token_ids`


@dataclass
class ServedToken:
    """One token of a choice: its id, and (where asked for) its log-probability and the top alternatives."""

    id: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)  # most likely first


def token_id(name: str) -> int:
    if not name.startswith(TOKEN_ID_PREFIX):
        raise ValueError(f"not a token id: {name!r}")
    return int(name[len(TOKEN_ID_PREFIX):])


def _top(entry: dict | None, k: int) -> list[tuple[int, float]]:
    if not entry:
        return []
    ranked = sorted(((token_id(name), float(lp)) for name, lp in entry.items()), key=lambda t: -t[1])
    return ranked[:k]


def choice_tokens(choice, top_logprobs: int, shown_url: str) -> list[ServedToken]:
    """The new tokens of one streamed choice (vLLM's `token_ids`, its `logprobs` lined up with them)."""
    ids = getattr(choice, "token_ids", None)
    logprobs = getattr(choice, "logprobs", None)
    try:
        if ids is None and logprobs is not None and logprobs.tokens is not None:
            ids = [token_id(t) for t in logprobs.tokens]
        if ids is None:
            if not getattr(choice, "text", ""):
                return []
            raise ValueError("the answer has text but no token ids")
        tokens = [ServedToken(int(t)) for t in ids]
        if logprobs is not None and logprobs.token_logprobs is not None:
            for token, lp in zip(tokens, logprobs.token_logprobs):
                token.logprob = None if lp is None else float(lp)
            for token, entry in zip(tokens, logprobs.top_logprobs or []):
                token.top = _top(entry, top_logprobs)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ServerError(f"The server at {shown_url} answered without OPT's token ids ({exc}): served models "
                          "need vLLM's OpenAI server (it returns them with return_token_ids).") from None
    return tokens
