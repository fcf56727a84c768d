"""Widget messages handled while a cell or a widget callback is still running (ipykernel 6 and 7)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import threading
from collections.abc import Callable, Iterator

from ..signals import interrupt_thread

COMM_MESSAGES = ("comm_open", "comm_msg", "comm_close")
_NOT_A_SHELL = object()  # a thread that is neither the main shell's nor a subshell's


def running_kernel():
    """The ipykernel kernel this code runs in, or None (plain Python, a test, another front end)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    kernel = getattr(get_ipython(), "kernel", None)
    return kernel if hasattr(kernel, "shell_handlers") and hasattr(kernel, "session") else None


def current_request_id() -> str | None:
    """The msg_id of the request (cell or widget message) the kernel is handling now, if any."""
    kernel = running_kernel()
    if kernel is None:
        return None
    return (kernel.get_parent("shell") or {}).get("header", {}).get("msg_id")


class KernelEvents:
    """While a long job runs inside a request (the kernel handles one at a time), `pump()` handles the
    widget messages waiting for the kernel (a Stop click, a slider moved) at once, in this thread, each
    between its own busy and idle, and leaves every other request (a cell to run) queued in its order.

    What jupyter-ui-poll does for cells, for widget callbacks too: on ipykernel 6 the waiting messages
    are in `kernel.msg_queue` once the shell stream is flushed; on ipykernel 7 they wait on the socket of
    the shell this request runs in, the main one or a subshell (its `shell_channel_thread` forwards them
    there), and are handed back to the stream's own callback when they are not widget messages. Without
    a kernel, `pump()` does nothing; `interrupts()` routes the kernel's interrupt to the running job."""

    def __init__(self, kernel=None):
        self.kernel = kernel if kernel is not None else running_kernel()
        self.thread = threading.get_ident()
        self.subshell = self._subshell_id()
        self.supported = self.kernel is not None and self.subshell is not _NOT_A_SHELL and (
            hasattr(self.kernel, "msg_queue") or self._own_stream() is not None)

    def _subshell_id(self):
        """ipykernel 7: the subshell whose thread this is (None: the main shell). JupyterLab 4.6 sends widget
        messages over a subshell of their own (its `commsOverSubshells` setting), so a widget callback may
        run in that subshell's thread rather than the main one."""
        if threading.current_thread() is threading.main_thread():
            return None
        channel = getattr(self.kernel, "shell_channel_thread", None)
        try:
            return channel.manager.subshell_id_from_thread_id(self.thread)
        except (AttributeError, RuntimeError):  # no subshells, or a thread of our own: nothing to pump
            return _NOT_A_SHELL

    def _own_stream(self):
        """ipykernel 7: the stream this shell's (main or subshell) messages arrive on, None if none."""
        kernel = self.kernel
        channel = getattr(kernel, "shell_channel_thread", None)
        try:
            if channel is not None:
                return channel.manager.get_shell_channel_to_subshell_pair(self.subshell).to_stream
        except (AttributeError, KeyError):  # a kernel laid out otherwise: no pumping, nothing broken
            return None
        return getattr(kernel, "shell_stream", None) if not hasattr(kernel, "msg_queue") else None

    @contextlib.contextmanager
    def interrupts(self, handler: Callable[[], None]) -> Iterator[None]:
        """While inside, the kernel's interrupt (SIGINT: JupyterLab's Interrupt, Colab's stop button) calls
        `handler()`. Python runs signal handlers in the main thread only: where this request runs in a
        subshell's thread, the handler is installed there through the main shell's event loop (idle while
        a subshell works), and a KeyboardInterrupt it raises is raised in this thread instead."""
        if not self.supported:
            yield
            return
        if self.subshell is None:
            previous = signal.signal(signal.SIGINT, lambda signum, frame: handler())
            try:
                yield
            finally:
                signal.signal(signal.SIGINT, previous)
            return

        active = threading.Lock()  # held by the job while inside; the handler acts only then

        def on_sigint(signum, frame):
            if not active.locked():
                return  # the job ended; the handler goes as soon as the main loop gets to `restore`
            try:
                handler()
            except KeyboardInterrupt:
                interrupt_thread(self.thread)

        previous = []

        def install():
            previous.append(signal.signal(signal.SIGINT, on_sigint))

        def restore():  # unless someone else replaced it since
            if previous and signal.getsignal(signal.SIGINT) is on_sigint:
                signal.signal(signal.SIGINT, previous[0])

        loop = self.kernel.io_loop
        with active:
            loop.add_callback(install)
            try:
                yield
            finally:
                loop.add_callback(restore)  # after install: the loop runs its callbacks in order

    def pump(self) -> int:
        """Handle the widget messages waiting now; return how many."""
        if not self.supported:
            return 0
        try:
            if hasattr(self.kernel, "msg_queue"):
                return self._pump_queue()
            return self._pump_socket()
        except Exception:  # the kernel's internals changed: the job goes on, Stop waits for its end
            self.supported = False
            self.kernel.log.error("Could not handle widget messages during a running request", exc_info=True)
            return 0

    # ipykernel 6: flush the shell stream into the kernel's queue, take the widget messages out of it
    def _pump_queue(self) -> int:
        kernel = self.kernel
        kernel.shell_stream.flush()
        waiting = []
        while not kernel.msg_queue.empty():
            waiting.append(kernel.msg_queue.get_nowait())
        handled = 0
        for item in waiting:
            _, dispatch, args = item
            if dispatch == kernel.dispatch_shell and len(args) == 1 and self._is_comm(args[0]):
                self._handle(args[0], kernel.shell_stream)
                handled += 1
            else:
                kernel.msg_queue.put_nowait(item)  # back in its place, after the ones before it
        return handled

    # ipykernel 7: read this shell's socket; what is not a widget message goes to its usual handler
    def _pump_socket(self) -> int:
        import zmq

        stream = self._own_stream()
        handled = 0
        while True:
            try:
                raw = stream.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return handled
            if self._is_comm(raw):
                channel = getattr(self.kernel, "shell_channel_thread", None)
                reply_to = (channel.manager.get_subshell_to_shell_channel_socket(self.subshell)
                            if channel is not None else stream)
                self._handle(raw, reply_to)
                handled += 1
            else:
                later = stream._recv_callback(raw)
                if inspect.isawaitable(later):
                    asyncio.ensure_future(later)  # runs after the current request, in arrival order

    def _is_comm(self, raw) -> bool:
        """A widget message? (Its header only: the signature is checked when it is handled.)"""
        session = self.kernel.session
        try:
            _, frames = session.feed_identities(raw, copy=False)
            header = frames[1]
            header = session.unpack(header.bytes if hasattr(header, "bytes") else header)
        except Exception:  # not one we can read: left to the kernel, which says what is wrong with it
            return False
        return header.get("msg_type") in COMM_MESSAGES

    def _handle(self, raw, stream) -> None:
        """What the kernel's dispatch_shell does for a widget message, done synchronously here."""
        kernel = self.kernel
        idents, frames = kernel.session.feed_identities(raw, copy=False)
        msg = kernel.session.deserialize(frames, content=True, copy=False)
        saved = self._parent()
        kernel.set_parent(idents, msg, channel="shell")
        kernel._publish_status("busy", "shell")
        try:
            kernel.shell_handlers[msg["header"]["msg_type"]](stream, idents, msg)
        except Exception:
            kernel.log.error("Exception in a widget message handled during a running request", exc_info=True)
        finally:
            kernel._publish_status("idle", "shell")
            kernel.set_parent(*saved, channel="shell")

    def _parent(self) -> tuple:
        kernel = self.kernel
        var = getattr(kernel, "_shell_parent_ident", None)  # ipykernel 7 keeps it in a ContextVar
        if var is not None:
            ident = kernel._get_shell_context_var(var)
        else:
            ident = getattr(kernel, "_parent_ident", {}).get("shell")
        return ident, kernel.get_parent("shell")
