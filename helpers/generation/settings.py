"""Decoding settings: one validated, immutable dataclass, its presets, and its GenerationConfig."""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import asdict, dataclass, field, fields, replace

from transformers import GenerationConfig

from ..errors import SettingsError
from ..opt.sizes import EOS_TOKEN_ID, PAD_TOKEN_ID

# Past these, sampling is greedy decoding or uniform noise, and logits overflow to inf.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-4, 100.0
MIN_PENALTY, MAX_PENALTY = 0.01, 100.0
MAX_TOP_LOGPROBS = 20  # alternatives listed per token


def check_top_logprobs(value, name: str = "top_logprobs") -> int:
    """The number of alternatives to list per token, checked (0 to MAX_TOP_LOGPROBS)."""
    if not _is_int(value) or not 0 <= value <= MAX_TOP_LOGPROBS:
        raise SettingsError(f"{name} must be a whole number from 0 to {MAX_TOP_LOGPROBS} (got {value!r}).")
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class GenerationSettings:
    """How to pick each next token. Defaults are a good general setting (nucleus sampling);
    `GenerationSettings.greedy()` is the 2022 tutorial's argmax decoding.

    The mode follows from the fields: `num_beams > 1` is beam search, `penalty_alpha > 0` (with
    `top_k > 1`) is contrastive search, else `do_sample` chooses sampling or greedy.
    """

    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 0.7
    top_k: int = 0  # 0: off
    top_p: float = 0.9  # 1.0: off
    typical_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off; above 1 discourages tokens already present
    no_repeat_ngram_size: int = 0  # 0: off
    num_beams: int = 1
    penalty_alpha: float = 0.0  # contrastive search's degeneration penalty; 0: off
    stop: tuple[str, ...] = field(default_factory=tuple)  # stop strings, not included in the text
    seed: int | None = None  # for sampling; None draws a fresh one
    min_new_tokens: int = 0  # EOS is forbidden before this many new tokens

    def __post_init__(self) -> None:
        if self.stop is None:
            object.__setattr__(self, "stop", ())
        elif isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, (list, set, frozenset)):
            object.__setattr__(self, "stop", tuple(self.stop))
        for problem in self.problems():
            raise SettingsError(problem)
        for name in ("temperature", "top_p", "typical_p", "repetition_penalty", "penalty_alpha"):
            object.__setattr__(self, name, float(getattr(self, name)))  # transformers' processors want floats

    @classmethod
    def greedy(cls, max_new_tokens: int = 30, **changes) -> GenerationSettings:
        """The tutorial's decoding: always the most likely token."""
        return cls(max_new_tokens=max_new_tokens, do_sample=False, **changes)

    def replace(self, **changes) -> GenerationSettings:
        """A copy with some fields changed (validated again). Unknown names are an error."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise SettingsError(f"Unknown setting(s) {', '.join(unknown)}. Known settings: {', '.join(sorted(known))}.")
        return replace(self, **changes)

    @property
    def mode(self) -> str:
        """'greedy', 'sample', 'beam', 'beam-sample' or 'contrastive'."""
        if self.num_beams > 1:
            return "beam-sample" if self.do_sample else "beam"
        if self.penalty_alpha > 0:
            return "contrastive"
        return "sample" if self.do_sample else "greedy"

    @property
    def samples(self) -> bool:
        """Whether tokens are drawn at random (sampling or beam sampling), so that the seed matters."""
        return self.mode in ("sample", "beam-sample")

    def with_seed_drawn(self) -> GenerationSettings:
        """These settings with a random seed where they sample and name none: the one seed policy, so that
        every run that samples records the seed that repeats it."""
        if self.samples and self.seed is None:
            return self.replace(seed=random.randrange(2**31))
        return self

    def problems(self) -> list[str]:
        """Every reason these settings cannot work, as sentences a user can act on (empty if fine)."""
        out = []
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            out.append(f"max_new_tokens must be a whole number of at least 1 (got {self.max_new_tokens!r}).")
        if not _is_int(self.min_new_tokens) or self.min_new_tokens < 0:
            out.append(f"min_new_tokens must be a whole number of at least 0 (got {self.min_new_tokens!r}).")
        elif _is_int(self.max_new_tokens) and self.min_new_tokens > self.max_new_tokens:
            out.append(f"min_new_tokens ({self.min_new_tokens}) cannot exceed max_new_tokens ({self.max_new_tokens}).")
        if not isinstance(self.do_sample, bool):
            out.append(f"do_sample must be True or False (got {self.do_sample!r}).")
        if not _is_number(self.temperature) or self.temperature <= 0:
            out.append(
                f"temperature must be a number above 0 (got {self.temperature!r}); for the always-most-likely "
                "token use greedy decoding (do_sample=False, or --greedy on the command line)."
            )
        elif not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:
            out.append(
                f"temperature must be between {MIN_TEMPERATURE} and {MAX_TEMPERATURE} (got {self.temperature!r}): "
                "below, sampling is greedy decoding (use do_sample=False); above, it is uniform noise."
            )
        if not _is_int(self.top_k) or self.top_k < 0:
            out.append(f"top_k must be a whole number, 0 to switch it off (got {self.top_k!r}).")
        for name in ("top_p", "typical_p"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value <= 1:
                out.append(f"{name} must be above 0 and at most 1, 1 to switch it off (got {value!r}).")
        if not _is_number(self.repetition_penalty) or not MIN_PENALTY <= self.repetition_penalty <= MAX_PENALTY:
            out.append(f"repetition_penalty must be between {MIN_PENALTY} and {MAX_PENALTY}, 1 to switch it off "
                       f"(got {self.repetition_penalty!r}); 1.1 to 1.3 discourages repeats, below 1 encourages them.")
        if not _is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            out.append(f"no_repeat_ngram_size must be a whole number, 0 to switch it off (got {self.no_repeat_ngram_size!r}).")
        if not _is_int(self.num_beams) or self.num_beams < 1:
            out.append(f"num_beams must be a whole number of at least 1 (got {self.num_beams!r}).")
        if not _is_number(self.penalty_alpha) or not 0 <= self.penalty_alpha <= 1:
            out.append(f"penalty_alpha must be between 0 and 1, 0 to switch contrastive search off (got {self.penalty_alpha!r}).")
        elif self.penalty_alpha > 0:
            if _is_int(self.top_k) and self.top_k < 2:
                out.append("Contrastive search (penalty_alpha > 0) compares top_k candidates: set top_k to 2 or more (4 to 10 is usual).")
            if self.do_sample is True:
                out.append("Contrastive search is deterministic: set do_sample=False with penalty_alpha > 0.")
            if _is_int(self.num_beams) and self.num_beams > 1:
                out.append("Contrastive search and beam search cannot be combined: set num_beams=1 or penalty_alpha=0.")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            out.append(f"stop must be non-empty strings (got {self.stop!r}).")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            out.append(f"seed must be a whole number from 0 to 2**63 - 1, or None (got {self.seed!r}).")
        return out

    def as_dict(self) -> dict:
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data

    def effective(self) -> dict:
        """Deprecated (nothing uses it): only the fields that act in this mode."""
        warnings.warn("GenerationSettings.effective() is deprecated: use as_dict() and mode.", DeprecationWarning,
                      stacklevel=2)
        data = self.as_dict()
        if self.mode in ("greedy", "beam", "contrastive"):
            for name in ("temperature", "top_p", "typical_p", "seed"):
                data.pop(name)
            if self.mode != "contrastive":
                data.pop("top_k")
        if self.mode != "contrastive":
            data.pop("penalty_alpha")
        data["mode"] = self.mode
        return data

    def generation_config(self) -> GenerationConfig:
        """The equivalent `transformers.GenerationConfig` (stop strings need `tokenizer=` in generate())."""
        sampling = self.do_sample and self.mode != "contrastive"
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens or None,
            do_sample=sampling,
            temperature=self.temperature if sampling else None,
            top_k=self.top_k if (sampling or self.mode == "contrastive") else None,
            top_p=self.top_p if sampling else None,
            typical_p=self.typical_p if sampling else None,
            repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            num_beams=self.num_beams,
            penalty_alpha=self.penalty_alpha or None,
            stop_strings=list(self.stop) or None,
            eos_token_id=EOS_TOKEN_ID,
            pad_token_id=PAD_TOKEN_ID,
            bos_token_id=EOS_TOKEN_ID,
            remove_invalid_values=True,  # extreme temperatures or penalties overflow to inf / nan
        )


class _Presets(dict):
    """The presets by label; the tutorial's greedy still answers to its first label (with a DeprecationWarning)."""

    _FORMER = {"the seed's greedy": "the tutorial's greedy"}

    def __missing__(self, label: str) -> GenerationSettings:
        if label in self._FORMER:
            warnings.warn(f"The preset {label!r} is called {self._FORMER[label]!r} now.", DeprecationWarning,
                          stacklevel=2)
            return self[self._FORMER[label]]
        raise KeyError(label)


PRESETS: dict[str, GenerationSettings] = _Presets({
    "the tutorial's greedy": GenerationSettings.greedy(max_new_tokens=30),
    "balanced sampling": GenerationSettings(temperature=0.7, top_p=0.9, repetition_penalty=1.1),
    "creative": GenerationSettings(temperature=1.0, top_p=0.95, top_k=0, repetition_penalty=1.05),
    "contrastive": GenerationSettings(do_sample=False, penalty_alpha=0.6, top_k=4),
})
