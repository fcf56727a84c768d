"""The text of one sequence as tokens arrive: decoded incrementally, stop strings held back."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ..opt.sizes import EOS_TOKEN_ID
from .results import TokenInfo


class RowText:
    """The text of one sequence as tokens arrive: decoded incrementally, cut at a stop string, and
    holding back what may still turn into one (or an incomplete UTF-8 character)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: tuple[str, ...], keep_tokens: bool = True):
        self.tokenizer, self.stop, self.keep_tokens = tokenizer, stop, keep_tokens
        self.ids: list[int] = []
        self.tokens: list[TokenInfo] = []  # with keep_tokens: each token as it came, log-probabilities and all
        self.text, self.emitted = "", 0
        self.finish: str | None = None

    def add(self, token: TokenInfo) -> str:
        """Take a token; return the text that became final."""
        if token.id == EOS_TOKEN_ID:
            self.finish = "eos"
            return self.flush()
        self.ids.append(token.id)
        if self.keep_tokens:
            self.tokens.append(token)
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

    def end(self, reason: str) -> str:
        """The sequence is over (for `reason`, unless it ended by itself); return the text held back."""
        self.finish = self.finish or reason
        return self.flush()

    def scored(self, tokens: list[TokenInfo]) -> None:
        """Its tokens with the log-probabilities computed after the run (one per id)."""
        self.tokens = tokens
