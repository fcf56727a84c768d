"""The playground's jobs: one at a time, inside their request, Stop and interrupts honoured, failures shown."""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from contextlib import contextmanager

import torch

from ..errors import GPU_OUT_OF_MEMORY, HelpersError
from .kernel_events import KernelEvents


class Jobs:
    """Running the app's jobs. The app has the widgets these touch (buttons, progress, message) and sets
    `_stream` while a generation streams."""

    def __init__(self) -> None:
        self.last_error: str | None = None
        self._stream = None
        self._job: str | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._events: KernelEvents | None = None
        self._interrupted = False

    @property
    def busy(self) -> bool:
        return self._job is not None

    def _start(self, target: Callable, *args) -> bool:
        """Run a job now, inside the request that asked for it; one at a time (a click that arrives while
        one runs is told so). False if it could not start."""
        if self.busy:
            self._say("Busy with the current job: press Stop, or wait for it to finish.", "warning")
            return False
        self._job, self._interrupted = target.__name__, False
        self._idle.clear()
        self._events = KernelEvents()
        self.generate_button.disabled = self.compare_button.disabled = True
        try:
            with self._interrupts():
                self._guarded(target, *args)
        finally:
            self._job, self._events = None, None
            self._idle.set()
        return True

    @contextmanager
    def _interrupts(self):
        """In a kernel, the interrupt (SIGINT) stops a generation at its next step like Stop, and raises
        KeyboardInterrupt anywhere else (a load)."""
        if self._events is None:
            yield
            return

        def on_interrupt():
            self._interrupted = True
            if self._stream is None:
                raise KeyboardInterrupt
            self._stream.stop()

        with self._events.interrupts(on_interrupt):
            yield

    def _pump(self) -> None:
        """Handle the widget messages waiting for the kernel (a Stop click) while a job runs."""
        if self._events is not None:
            self._events.pump()

    def _guarded(self, target: Callable, *args) -> None:
        """Any failure becomes a message in the widget, which stays usable."""
        try:
            target(*args)
            if self._interrupted:
                self._say("Interrupted: the generation stopped there (the kernel's interrupt works like Stop).",
                          "warning")
        except KeyboardInterrupt:
            self._say("Interrupted: nothing is running now; the app is ready.", "warning")
            if self._events is None or not self._events.supported:
                raise  # plain Python: Ctrl-C ends the program as usual, after the cleanup below
        except HelpersError as exc:
            self._say(str(exc), "error")
        except torch.cuda.OutOfMemoryError:
            self._say(GPU_OUT_OF_MEMORY, "error")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception as exc:  # a bug or a library failure: say it, keep the app alive
            self._say(f"Something failed: {type(exc).__name__}: {exc}", "error")
        finally:
            self._stream = None
            self.generate_button.disabled = self.compare_button.disabled = False
            self.stop_button.disabled = True
            self.progress.layout.visibility = "hidden"

    def wait(self, timeout: float | None = 120) -> None:
        """Block until the current job (loading, generating) ends. Jobs run in the call that starts them,
        so this only waits when another thread started one."""
        self._idle.wait(timeout)

    def _say(self, text: str, kind: str = "info") -> None:
        self.last_error = text if kind == "error" else None
        colors = {"error": "#b00020", "warning": "#8a6d00", "info": "#555"}
        self.message.value = f'<div style="color:{colors[kind]}">{html.escape(text)}</div>' if text else ""
