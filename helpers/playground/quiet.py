"""`Quiet`: a flag held while code (not the user) changes a widget, so the widget's observer can tell the two apart."""

from __future__ import annotations


class Quiet:
    """`with quiet:` around a change made by code; an observer returns early `if quiet`."""

    def __init__(self) -> None:
        self._depth = 0

    def __enter__(self) -> Quiet:
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1

    def __bool__(self) -> bool:
        return self._depth > 0
