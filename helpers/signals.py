"""Signals as exceptions: SIGTERM like Ctrl-C (`Terminated`), Ctrl-C held or passed on to another thread."""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import signal
import sys
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


class HeldInterrupt:
    """Ctrl-Cs counted instead of raised where they land (see `ctrl_c_held`): work reads `arrived` between its
    steps and stops there. Counting only, no lock, so the signal handler cannot block on anything."""

    def __init__(self, again_raises: bool = False):
        self._count = 0
        self._again_raises = again_raises

    @property
    def arrived(self) -> bool:
        return self._count > 0

    def receive(self, signum, frame) -> None:
        """The SIGINT handler while it is held."""
        self._count += 1
        if self._again_raises and self._count > 1:  # a second Ctrl-C: the user will not wait for the step to end
            raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c_held(held: HeldInterrupt) -> Iterator[HeldInterrupt]:
    """While inside, a Ctrl-C (SIGINT) is counted in `held` rather than raised wherever it lands (inside a
    library's half-done import, or its `__del__`, where Python prints it and drops it); with `again_raises`,
    a second one raises at once. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous = signal.signal(signal.SIGINT, held.receive)
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def interrupt_after(again_raises: bool = False) -> Iterator[HeldInterrupt]:
    """Hold a Ctrl-C that arrives inside until the block ends, then raise `KeyboardInterrupt`: for imports of
    torch and transformers, which an interrupt in the middle can leave half-initialised (a traceback from deep
    inside them, or an abort), and for decoding loops, which read `arrived` between steps and stop there."""
    with ctrl_c_held(HeldInterrupt(again_raises)) as held:
        yield held
    if held.arrived:
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_never_dropped() -> Iterator[None]:
    """While inside, a Ctrl-C or SIGTERM that lands inside some library's `__del__` (a finalizer run by the
    garbage collector, in the middle of anything) is delivered again to the main thread instead of being
    printed as "Exception ignored" and dropped, which would leave the command running on."""
    previous = sys.unraisablehook

    def redeliver(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and threading.current_thread() is threading.main_thread()):
            previous(unraisable)
            return
        signum = signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT
        later = threading.Timer(0.05, _thread.interrupt_main, (signum,))  # from here it would land in this hook
        later.daemon = True
        later.start()

    sys.unraisablehook = redeliver
    try:
        yield
    finally:
        sys.unraisablehook = previous


def interrupt_thread(ident: int) -> None:
    """Raise KeyboardInterrupt in the thread `ident` at its next Python instruction, as Ctrl-C does in the
    main thread: for work running in another thread (a kernel subshell's) when only the main thread can
    receive the signal. A thread blocked in C (a long tensor op) gets it when that op returns."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt))
