"""The playground's jobs: one at a time, inside their request, Stop and interrupts honoured, failures shown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch

from ..errors import GPU_OUT_OF_MEMORY, HelpersError
from ..generation.streaming import TextStream
from .kernel_events import KernelEvents
from .status_line import StatusLine

BUSY = "Already generating: press Stop first."
BUSY_LOADING = "Busy with the current job: press Stop, or wait for it to finish."


class Jobs:
    """Runs the app's jobs (loading, generating) one at a time, and follows the stream a job generates:
    the one place that knows whether something runs, and the one throttled redraw. `on_busy(True/False)`
    is called as a job starts and ends, `on_stream(True/False)` as a stream starts and ends (Stop's state)."""

    def __init__(self, status: StatusLine, on_busy: Callable[[bool], None], on_stream: Callable[[bool], None]):
        self.refresh_seconds = 0.25  # how often streamed text, status and tokens reach the page
        self.stream: TextStream | None = None  # the generation running now
        self._status, self._on_busy, self._on_stream = status, on_busy, on_stream
        self._job: str | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._events: KernelEvents | None = None
        self.interrupted = False
        self._stop_asked = False  # Stop pressed before the job's stream began (while its model loaded)

    @property
    def busy(self) -> bool:
        return self._job is not None

    def refused(self) -> bool:
        """The busy check: True (after saying so) when a job runs, so a second one must not start."""
        if self.busy:
            self._status.say(BUSY if self.stream is not None or self._job == "_generate" else BUSY_LOADING, "warning")
        return self.busy

    def start(self, target: Callable, *args) -> bool:
        """Run a job now, inside the request that asked for it; one at a time (a click that arrives while
        one runs is told so). False if it could not start."""
        if self.refused():
            return False
        self._job, self.interrupted, self._stop_asked = target.__name__, False, False
        self._idle.clear()
        self._events = KernelEvents()
        self._on_busy(True)
        try:
            with self._interrupts():
                self._guarded(target, *args)
        finally:
            self._job, self._events = None, None
            self._idle.set()
            for warning in (BUSY, BUSY_LOADING):  # true only while the job ran
                self._status.withdraw(warning)
        return True

    def follow(self, text_stream: TextStream, draw: Callable[[list[str], bool], None]) -> None:
        """Iterate `text_stream`, handing the pieces so far to `draw(pieces, final)` a few times a second
        (each redraw costs the page a render) and once at the end; Stop ends it within a step."""
        self.stream = text_stream
        if self._stop_asked:
            text_stream.stop()
        self._on_stream(True)
        pieces: list[str] = []
        shown = time.perf_counter()
        try:
            for piece in text_stream:
                pieces.append(piece)
                if time.perf_counter() - shown >= self.refresh_seconds:
                    shown = time.perf_counter()
                    draw(pieces, False)
        finally:
            self.stream = None  # an interrupt while the next model loads must end that load
            self._on_stream(False)
        draw(pieces, True)

    def throttle(self, seconds: float) -> None:
        """Redraw a stream at most every `seconds` (0: at every piece)."""
        self.refresh_seconds = seconds

    def stop(self) -> None:
        """End the running generation within one decoding step (at its start, if it has not begun)."""
        if self.stream is not None:
            self.stream.stop()
        elif self.busy:
            self._stop_asked = True

    def pump(self) -> None:
        """Handle the widget messages waiting for the kernel (a Stop click) while a job runs."""
        if self._events is not None:
            self._events.pump()

    @contextmanager
    def _interrupts(self):
        """In a kernel, the interrupt (SIGINT) stops a generation at its next step like Stop, and raises
        KeyboardInterrupt anywhere else (a load)."""
        if self._events is None:
            yield
            return

        def on_interrupt():
            self.interrupted = True
            if self.stream is None:
                raise KeyboardInterrupt
            self.stream.stop()

        with self._events.interrupts(on_interrupt):
            yield

    def _guarded(self, target: Callable, *args) -> None:
        """Any failure becomes a message in the widget, which stays usable."""
        say = self._status.say
        try:
            target(*args)
            if self.interrupted:
                say("Interrupted: the generation stopped there (the kernel's interrupt works like Stop).", "warning")
        except KeyboardInterrupt:
            say("Interrupted: nothing is running now; the app is ready.", "warning")
            if self._events is None or not self._events.supported:
                raise  # plain Python: Ctrl-C ends the program as usual, after the cleanup below
        except HelpersError as exc:
            say(str(exc), "error")
        except torch.cuda.OutOfMemoryError:
            say(GPU_OUT_OF_MEMORY, "error")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception as exc:  # a bug or a library failure: say it, keep the app alive
            say(f"Something failed: {type(exc).__name__}: {exc}", "error")
        finally:
            self.stream = None
            self._on_busy(False)

    def wait(self, timeout: float | None = 120) -> None:
        """Block until the current job (loading, generating) ends. Jobs run in the call that starts them,
        so this only waits when another thread started one."""
        self._idle.wait(timeout)
