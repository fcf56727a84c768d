"""The hooks the playground's in-request jobs rely on: `stream(on_step=...)` after every decoding step, in
the consuming thread (beam search too), and `KernelEvents` doing nothing outside a kernel."""

import queue
import threading
import time

import pytest

from helpers.generation.settings import GenerationSettings
from helpers.generation.streaming import stream
from helpers.playground.kernel_events import KernelEvents, current_request_id, running_kernel


@pytest.mark.parametrize("settings", [GenerationSettings.greedy(max_new_tokens=12),
                                      GenerationSettings(max_new_tokens=12, do_sample=False, num_beams=2)],
                         ids=["greedy", "beams"])
def test_on_step_runs_in_the_consuming_thread_every_step(tiny, tokenizer, settings):
    threads = []
    s = stream(tiny, tokenizer, "Hello", settings, on_step=lambda: threads.append(threading.current_thread()))
    s.text()
    assert len(threads) >= len(s.result.token_ids) and set(threads) == {threading.current_thread()}


@pytest.mark.parametrize("settings", [GenerationSettings.greedy(max_new_tokens=200),
                                      GenerationSettings(max_new_tokens=200, do_sample=False, num_beams=2)],
                         ids=["greedy", "beams"])
def test_a_stop_from_on_step_ends_the_run_at_that_step(tiny, tokenizer, settings):
    calls = []

    def step():
        calls.append(1)
        if len(calls) == 4:
            s.stop()  # what a Stop click handled between two steps does

    s = stream(tiny, tokenizer, "Hello", settings, on_step=step)
    s.text()
    assert s.result.finish_reason == "stopped" and len(s.result.token_ids) <= 5


def test_outside_a_kernel_there_is_nothing_to_pump():
    assert running_kernel() is None and current_request_id() is None
    events = KernelEvents()
    assert not events.supported and events.pump() == 0


SUBSHELL_JOB = """
import threading, time
from helpers.playground.kernel_events import KernelEvents
events, calls, ended = KernelEvents(), [], "ran out"
print("ready", events.supported, events.subshell is not None, threading.current_thread() is not threading.main_thread(),
      flush=True)
def on_interrupt():
    calls.append(threading.current_thread() is threading.main_thread())
    if len(calls) == 2:
        raise KeyboardInterrupt  # what a job without a stream (a load) does: raised in this thread instead
try:
    with events.interrupts(on_interrupt):
        start = time.time()
        while time.time() - start < 60:
            time.sleep(0.02)
except KeyboardInterrupt:
    ended = "interrupted"
print("end", calls, ended, flush=True)
"""


@pytest.mark.slow
def test_in_a_kernel_subshell_the_interrupt_reaches_the_job():
    """JupyterLab 4.6 runs widget callbacks in a kernel subshell's thread (ipykernel 7), where Python cannot
    install a signal handler: `interrupts()` installs it in the main thread and hands a KeyboardInterrupt on."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        if "kernel subshells" not in client.kernel_info(reply=True)["content"].get("supported_features", []):
            pytest.skip("this ipykernel has no subshells (ipykernel 6: Colab's)")
        client.control_channel.send(client.session.msg("create_subshell_request", {}))
        subshell = client.control_channel.get_msg(timeout=30)["content"]["subshell_id"]
        request = client.session.msg("execute_request", {"code": SUBSHELL_JOB, "silent": False})
        request["header"]["subshell_id"] = subshell
        client.shell_channel.send(request)
        lines = []

        def wait_line(prefix: str) -> str:
            deadline = time.time() + 90
            while time.time() < deadline:
                try:
                    msg = client.get_iopub_msg(timeout=1)
                except queue.Empty:
                    continue
                if msg["parent_header"].get("msg_id") == request["header"]["msg_id"]:
                    if msg["msg_type"] == "stream":
                        lines.extend(msg["content"]["text"].splitlines())
                    elif msg["msg_type"] == "error":
                        raise AssertionError("\n".join(msg["content"]["traceback"]))
                found = [line for line in lines if line.startswith(prefix)]
                if found:
                    return found[0]
            raise AssertionError(f"no {prefix!r} line in {lines}")

        assert wait_line("ready") == "ready True True True"
        for _ in range(2):
            time.sleep(1)  # the main loop installs the handler meanwhile
            manager.interrupt_kernel()
        assert wait_line("end") == "end [True, True] interrupted"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
