"""The second reliability round (issue 16): concurrent generations on one model, use after unload, damaged
weights, results checked before work starts, out-of-memory refused up front, SIGTERM, terminal faults."""

from __future__ import annotations

import threading

import pytest
import torch

from helpers.errors import ModelUnloadedError
from helpers.fixtures import tiny_model
from helpers.generation import GenerationSettings, generate, stream
from helpers.loading import unload

GREEDY = GenerationSettings.greedy(max_new_tokens=24, min_new_tokens=24)
PROMPTS = ["Natural language processing is", "Hi", "The weather today", "Once upon a time there"]


# ------------------------------------------------------------------------------ concurrent generations


@pytest.mark.parametrize("method", ["cpu-fast", "cached", "hf"])
def test_two_streams_interleaved_on_one_model_give_their_isolated_tokens(tokenizer, method):
    model = tiny_model("pre-ln", seed=11)
    alone = [generate(model, tokenizer, p, GREEDY, method=method).token_ids for p in PROMPTS[:2]]
    a, b = (stream(model, tokenizer, p, GREEDY, method=method) for p in PROMPTS[:2])
    ia, ib = iter(a), iter(b)
    for _ in range(200):  # a piece of one, then a piece of the other, until both end
        done = [next(it, None) is None for it in (ia, ib)]
        if all(done):
            break
    assert [a.result.token_ids, b.result.token_ids] == alone
    assert torch.get_num_threads() >= 1 and a.result.finish_reason == b.result.finish_reason == "length"


def test_interleaved_engine_streams_restore_torch_threads(tokenizer):
    model = tiny_model("pre-ln", seed=11)
    before = torch.get_num_threads()
    a, b = (iter(stream(model, tokenizer, p, GREEDY, method="cpu-fast")) for p in PROMPTS[:2])
    next(a), next(b)
    a.close()  # left in the other order than entered
    b.close()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("settings", [GREEDY, GenerationSettings(max_new_tokens=24, seed=3)], ids=["greedy", "seeded"])
def test_four_threads_on_one_model_give_exactly_the_isolated_tokens(tokenizer, settings):
    model = tiny_model("post-ln", seed=12)
    alone = {p: generate(model, tokenizer, p, settings).token_ids for p in PROMPTS}
    got: dict[str, list[list[int]]] = {p: [] for p in PROMPTS}
    errors: list[BaseException] = []

    def work(prompt: str) -> None:
        try:
            for _ in range(3):
                got[prompt].append(generate(model, tokenizer, prompt, settings).token_ids)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert got == {p: [alone[p]] * 3 for p in PROMPTS}


def test_seeded_sampling_through_model_generate_is_reproducible_under_threads(tokenizer):
    """model.generate samples from torch's one global generator: runs take turns, so the seed decides."""
    model = tiny_model("pre-ln", seed=13)
    settings = GenerationSettings(max_new_tokens=16, seed=7)
    alone = generate(model, tokenizer, "Hello", settings, method="hf").token_ids
    got: list[list[int]] = []
    threads = [threading.Thread(target=lambda: got.append(
        generate(model, tokenizer, "Hello", settings, method="hf").token_ids)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert got == [alone] * 4


# ------------------------------------------------------------------------------ after unload


def test_calling_an_unloaded_model_says_so(tokenizer):
    model = tiny_model("pre-ln")
    ids = torch.tensor([[2, 100, 200]])
    unload(model)
    with pytest.raises(ModelUnloadedError, match="unloaded"):
        model(ids)
    with pytest.raises(ModelUnloadedError, match="unloaded"):
        model.generate(ids, max_new_tokens=2)
    with pytest.raises(ModelUnloadedError, match="unloaded"):
        generate(model, tokenizer, "Hi", GREEDY)


@pytest.mark.parametrize("method", ["cpu-fast", "cached", "hf"])
def test_unloading_during_a_stream_stops_it_with_that_message(tokenizer, method):
    model = tiny_model("pre-ln", seed=14)
    s = stream(model, tokenizer, "Hello", GenerationSettings.greedy(max_new_tokens=400, min_new_tokens=400),
               method=method)
    pieces = []
    with pytest.raises(ModelUnloadedError, match="unloaded while this generation was running"):
        for piece in s:
            pieces.append(piece)
            if len(pieces) == 2:
                unload(model)
    assert len(s.result.token_ids) < 400
    assert not [t for t in threading.enumerate() if t.name == "helpers-generate"]


def test_unloading_from_another_thread_stops_an_engine_stream(tokenizer):
    model = tiny_model("pre-ln", seed=15)
    s = stream(model, tokenizer, "Hello", GenerationSettings.greedy(max_new_tokens=2000, min_new_tokens=2000),
               method="cpu-fast")
    started = threading.Event()

    def consume() -> None:
        try:
            for _ in s:
                started.set()
        except ModelUnloadedError as exc:
            outcome.append(exc)

    outcome: list[BaseException] = []
    worker = threading.Thread(target=consume)
    worker.start()
    assert started.wait(60)
    unload(model)
    worker.join(timeout=60)
    assert not worker.is_alive() and len(outcome) == 1
