"""RunControl: how a caller talks to a running generation (Stop, rows that are done) and hears each step."""

from __future__ import annotations

import threading
from collections.abc import Callable


class RunControl:
    """Shared by the caller and the decoding loop of one generation. The caller may `stop()` it (from any
    thread) and mark rows done (`finish_row`: a stop string was seen); the loop reads `stopped` and
    `finished_rows` between steps and ends within one step. `after_step()` runs the caller's progress hook
    in the thread that consumes the steps (the playground handles a waiting Stop click there)."""

    def __init__(self, on_step: Callable[[], None] | None = None):
        self._stop = threading.Event()
        self._finished_rows: set[int] = set()
        self._on_step = on_step

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def finish_row(self, row: int) -> None:
        """Row `row` needs no more tokens (its text reached a stop string)."""
        self._finished_rows.add(row)

    @property
    def finished_rows(self) -> frozenset[int]:
        return frozenset(self._finished_rows)

    def after_step(self) -> None:
        if self._on_step is not None:
            self._on_step()
