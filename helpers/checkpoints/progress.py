"""A progress line over bytes: a text bar, the rate and the time left, at most every few seconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..units import human_bytes


def duration(seconds: float) -> str:
    """'2h05m', '4m10s', '12s'."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressMeter:
    """Counts bytes done out of `total` (thread-safe) and says where things stand through `out`: a bar,
    the bytes, the rate, the time left estimated from the rate so far, and what `detail` says."""

    def __init__(self, label: str, total: int, out: Callable[[str], None], every: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.out, self.every, self.clock = label, max(total, 1), out, every, clock
        self.done = 0
        self.started = clock()
        self.shown = -every
        self.lock = threading.Lock()

    def advance(self, n: int, detail: str = "", force: bool = False) -> None:
        with self.lock:
            self.done += n
            now = self.clock()
            if force or self.done >= self.total or now - self.shown >= self.every:
                self.shown = now
                self.out(self.line(detail))

    def line(self, detail: str = "") -> str:
        fraction = min(self.done / self.total, 1.0)
        bar = "#" * int(fraction * 20)
        elapsed = self.clock() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = f", {duration((self.total - self.done) / rate)} left" if rate > 0 and self.done < self.total else ""
        speed = f", {human_bytes(rate)}/s" if rate > 0 else ""
        extra = f" ({detail})" if detail else ""
        return (f"{self.label}: [{bar:<20}] {fraction:4.0%} {human_bytes(self.done)} of {human_bytes(self.total)}"
                f"{speed}{left}{extra}")
