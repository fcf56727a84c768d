"""Notebook parameters checked before anything runs: one line naming the parameter and what it takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import HelpersError


class ParameterError(HelpersError, ValueError):
    """A notebook parameter that cannot work. In a notebook it shows as its one line, without a traceback."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook: what the cell's error output shows
        return [f"{type(self).__name__}: {self}"]


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}... ({type(value).__name__})" if len(text) > 60 else f"{text} ({type(value).__name__})"


def text_list(name: str, value: Any, *, at_least: int = 1, what: str = "prompts") -> list[str]:
    """`value` as a list of at least `at_least` strings; else a ParameterError naming `name`."""
    count = "one or more" if at_least <= 1 else f"at least {at_least}"
    takes = f'{name} takes a list of {count} {what} (strings), like ["first", "second"]'
    if isinstance(value, str):
        raise ParameterError(f"{takes}, not one string: {_shown(value)}. Put it in brackets: [{value!r}].")
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise ParameterError(f"{takes}; it is {_shown(value)}.")
    if len(value) < at_least:
        raise ParameterError(f"{takes}; it has {len(value)}. This notebook needs {at_least}.")
    return list(value)


def positive_int(name: str, value: Any) -> int:
    """`value` as a whole number of at least 1; else a ParameterError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(f"{name} takes a whole number of at least 1, like 30; it is {_shown(value)}.")
    return value


def existing_folder(name: str, value: Any, *, holding: str = "files", under: tuple[str | Path, ...] = ()) -> Path:
    """`value` as a folder that exists, as given or (when relative and not found) under one of `under`; else a
    ParameterError naming `name` and what it found there."""
    if not isinstance(value, (str, Path)) or not str(value):
        raise ParameterError(f"{name} takes the path of a folder of {holding}; it is {_shown(value)}.")
    path = Path(value).expanduser()
    tried = [path] + ([Path(base) / path for base in under] if not path.is_absolute() else [])
    found = next((candidate for candidate in tried if candidate.is_dir()), None)
    if found is not None:
        return found
    what = "is a file, not a folder" if path.exists() else "does not exist"
    raise ParameterError(f"{name} takes the path of a folder of {holding}; {str(value)!r} {what} "
                         f"(looked in {', '.join(str(t.resolve()) for t in tried)}).")


def settings_table(name: str, value: Any) -> dict:
    """`value`, a dict of label -> GenerationSettings fields, as a dict of label -> GenerationSettings; a label
    whose fields are unknown or impossible is a ParameterError naming it."""
    from .generation.settings import GenerationSettings

    example = '{"greedy": {"do_sample": False}, "top-p 0.9": {"top_p": 0.9}}'
    if not isinstance(value, dict) or not value or not all(isinstance(k, str) and isinstance(v, dict)
                                                           for k, v in value.items()):
        raise ParameterError(f"{name} takes a dict of label -> settings (a dict of GenerationSettings fields), "
                             f"like {example}; it is {_shown(value)}.")
    known = set(GenerationSettings.__dataclass_fields__)
    table = {}
    for label, fields in value.items():
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ParameterError(f"{name}[{label!r}] has {', '.join(unknown)}, which GenerationSettings does not "
                                 f"take; its fields are {', '.join(sorted(known))}.")
        try:
            table[label] = GenerationSettings(**fields)
        except HelpersError as exc:
            raise ParameterError(f"{name}[{label!r}]: {exc}") from None
    return table
