"""Signals as exceptions: SIGTERM like Ctrl-C (`Terminated`), Ctrl-C held or passed on to another thread."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import threading
from collections.abc import Iterator

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: what a shell reports for a process ended by SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (`timeout`, a closing notebook server, `docker stop`). Being a KeyboardInterrupt,
    it unwinds through the same `finally` blocks and `with` exits that Ctrl-C does: temporary folders
    are removed and partial outputs deleted before the process ends."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"terminated by signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` in the main thread instead of ending the process on
    the spot. Outside the main thread (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def interrupt_after() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside until the block ends, then raise `KeyboardInterrupt`:
    for imports of torch and transformers, which an interrupt in the middle can leave half-initialised
    (a traceback from deep inside them, or an abort). Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def interrupt_thread(ident: int) -> None:
    """Raise KeyboardInterrupt in the thread `ident` at its next Python instruction, as Ctrl-C does in the
    main thread: for work running in another thread (a kernel subshell's) when only the main thread can
    receive the signal. A thread blocked in C (a long tensor op) gets it when that op returns."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt))
