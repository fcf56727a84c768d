"""The hooks the playground's in-request jobs rely on: `stream(on_step=...)` after every decoding step, in
the consuming thread (beam search too), and `KernelEvents` doing nothing outside a kernel."""

import threading

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
