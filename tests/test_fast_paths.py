"""The fast paths: the lean CPU engine and model.generate with a static cache, token-identical to
model.generate in greedy mode; generate() picks them by device and batch."""

import threading

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_model

import helpers.generation.backends.registry as registry
from helpers.generation.backends.cpu_engine import CpuEngine, engine_for, supported
from helpers.generation.run import generate
from helpers.generation.settings import GenerationSettings
from helpers.generation.streaming import stream
from helpers.loading.model import unload
from helpers.opt.model_state import model_device
from helpers.opt.tokenizer import encode_prompt

PROMPTS = ["Natural language processing is a subfield of", "Hi", "Text classification is a machine learning technique"]


def hf_greedy(model, ids, n):
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("method", ["cpu-fast", "static", "auto"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_fast_paths_pick_the_same_greedy_tokens_as_model_generate(tiny, tokenizer, method, prompt):
    settings = GenerationSettings.greedy(max_new_tokens=40, min_new_tokens=40)
    result = generate(tiny, tokenizer, prompt, settings, method=method)
    assert result.token_ids == hf_greedy(tiny, encode_prompt(tokenizer, prompt), 40)
    assert result.method == ("cpu-fast" if method == "auto" else method)


def test_engine_logits_match_transformers_step_by_step(tiny, tokenizer):
    ids = encode_prompt(tokenizer, PROMPTS[0])
    sequence = engine_for(tiny).sequence(len(ids), 8)
    got = [sequence.prefill(ids)]
    for token in (100, 2000, 31414):
        got.append(sequence.step(token))
    full = ids + [100, 2000, 31414]
    with torch.no_grad():
        expected = tiny(torch.tensor([full])).logits[0]
    for i, logits in enumerate(got):
        torch.testing.assert_close(logits[0], expected[len(ids) - 1 + i], atol=2e-4, rtol=1e-4)


def test_engine_logprobs_reach_the_result_unchanged(tiny, tokenizer):
    calls, seen = [], []
    hook = tiny.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        s = stream(tiny, tokenizer, "Hello", GenerationSettings.greedy(max_new_tokens=8, min_new_tokens=8),
                   top_logprobs=5, method="cpu-fast")
        for _ in s:
            seen = list(s.tokens)  # the TokenInfo objects streamed so far
    finally:
        hook.remove()
    assert calls == []  # the engine made every step; no forward of transformers' model scored them again
    assert len(seen) == len(s.result.tokens) == 8 and all(len(t.top) == 5 for t in s.result.tokens)
    assert all(a is b for a, b in zip(seen, s.result.tokens))  # what streamed is what the result holds


def test_repacking_qkv_leaves_transformers_forward_unchanged(tokenizer):
    model = tiny_model("pre-ln", seed=9)
    ids = torch.tensor([encode_prompt(tokenizer, PROMPTS[2])])
    with torch.no_grad():
        before = model(ids).logits
        engine_for(model)
        after = model(ids).logits
    assert torch.equal(before, after)
    q = model.model.decoder.layers[0].self_attn.q_proj.weight
    k = model.model.decoder.layers[0].self_attn.k_proj.weight
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()  # one packed buffer


def test_sampling_on_the_engine_is_reproducible_and_streams(tiny, tokenizer):
    settings = GenerationSettings(max_new_tokens=20, seed=5)
    a = generate(tiny, tokenizer, "Hello", settings, method="cpu-fast")
    b = generate(tiny, tokenizer, "Hello", settings, method="cached")
    assert a.token_ids == b.token_ids  # same processors, same generator, same logits up to rounding
    assert "".join(stream(tiny, tokenizer, "Hello", settings)) == a.text


def test_the_engine_restores_torch_threads(tiny, tokenizer):
    before = torch.get_num_threads()
    s = stream(tiny, tokenizer, "Hello", GenerationSettings.greedy(max_new_tokens=50), method="cpu-fast")
    for i, _ in enumerate(s):
        if i == 3:
            break
    assert torch.get_num_threads() == before
    generate(tiny, tokenizer, "Hello", GenerationSettings.greedy(max_new_tokens=5), method="cpu-fast")
    assert torch.get_num_threads() == before


def test_auto_picks_by_device_and_batch(variant, tokenizer, monkeypatch):
    tiny = tiny_model(variant)
    greedy = GenerationSettings.greedy(max_new_tokens=3)
    assert generate(tiny, tokenizer, "Hi", greedy).method == "cpu-fast"
    assert {r.method for r in generate(tiny, tokenizer, ["Hi", "Hello there"], greedy)} == {"cached"}
    assert generate(tiny, tokenizer, "Hi", greedy.replace(num_beams=2)).method == "hf"
    assert generate(tiny, tokenizer, "Hi", greedy.replace(penalty_alpha=0.5, top_k=3)).method == "cached"
    assert generate(tiny.to(torch.float16), tokenizer, "Hi", greedy).method == "cached"  # the engine: fp32, bf16
    assert generate(tiny.to(torch.bfloat16), tokenizer, "Hi", greedy).method == "cpu-fast"  # (the bf16-cpu plan)
    tiny.float()
    assert generate(tiny, tokenizer, "Hi", greedy).token_ids == generate(tiny, tokenizer, "Hi", greedy,
                                                                          method="cached").token_ids
    monkeypatch.setattr(registry, "model_device", lambda model: torch.device("cuda"))
    assert registry.choose_backend("auto", tiny, greedy, 1).name == "static"  # one prompt on a GPU: compiled by transformers
    assert registry.choose_backend("auto", tiny, greedy, 2).name == "cached"


def test_cpu_fast_refuses_what_it_cannot_do(tiny, tokenizer):
    from helpers.errors import SettingsError

    with pytest.raises(SettingsError, match="one prompt of an fp32 or bf16 model"):
        generate(tiny, tokenizer, ["a", "b"], GenerationSettings.greedy(max_new_tokens=2), method="cpu-fast")
    assert not supported(torch.ao.quantization.quantize_dynamic(tiny_model("pre-ln"), {torch.nn.Linear}), 1)


def test_the_engine_follows_a_model_whose_weights_were_replaced(tokenizer):
    model = tiny_model("pre-ln", seed=2)
    settings = GenerationSettings.greedy(max_new_tokens=10)
    generate(model, tokenizer, "Hi", settings)
    model.load_state_dict(tiny_model("pre-ln", seed=3).state_dict(), assign=True)  # new tensors, new values
    assert generate(model, tokenizer, "Hi", settings).token_ids == generate(model, tokenizer, "Hi", settings,
                                                                             method="cached").token_ids


def test_a_deep_copy_of_the_model_does_not_copy_its_engine(tokenizer):
    """The engine's arrays are views of the weights; a deep copy (as `quantize_dynamic(inplace=False)`
    makes) would hold them as full second copies. The copy builds its own engine and gives the same tokens."""
    import copy

    model = tiny_model("pre-ln", seed=4)
    settings = GenerationSettings.greedy(max_new_tokens=8)
    expected = generate(model, tokenizer, "Hi", settings).token_ids
    clone = copy.deepcopy(model)
    assert clone._helpers_cpu_engine is None
    assert generate(clone, tokenizer, "Hi", settings, method="cpu-fast").token_ids == expected
    assert isinstance(clone._helpers_cpu_engine, CpuEngine)


def test_unload_drops_the_engine(tokenizer):
    model = tiny_model("post-ln")
    generate(model, tokenizer, "Hi", GenerationSettings.greedy(max_new_tokens=2))
    assert hasattr(model, "_helpers_cpu_engine")
    unload(model)
    assert not hasattr(model, "_helpers_cpu_engine")


@pytest.mark.parametrize("method", ["static", "hf"])
def test_model_generate_streams_from_a_worker_that_always_ends(tiny, tokenizer, method):
    settings = GenerationSettings.greedy(max_new_tokens=300)
    s = stream(tiny, tokenizer, "Hello", settings, method=method)
    pieces = []
    for piece in s:
        pieces.append(piece)
        if len(pieces) == 3:
            s.stop()
    assert s.result.finish_reason == "stopped" and len(s.result.token_ids) < 300
    assert not [t for t in threading.enumerate() if t.name == "helpers-generate"]
    early = stream(tiny, tokenizer, "Hello", settings, method=method)
    for _ in early:
        break
    assert early.result.finish_reason == "stopped"
    assert not [t for t in threading.enumerate() if t.name == "helpers-generate"]


def test_an_error_inside_model_generate_reaches_the_caller(tiny, tokenizer, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kaboom in generate")

    monkeypatch.setattr(tiny, "generate", broken)
    with pytest.raises(RuntimeError, match="kaboom"):
        generate(tiny, tokenizer, "Hello", GenerationSettings.greedy(max_new_tokens=5), method="hf")
    assert not [t for t in threading.enumerate() if t.name == "helpers-generate"]


def test_static_cache_batch_matches_model_generate(tiny, tokenizer):
    settings = GenerationSettings.greedy(max_new_tokens=12, min_new_tokens=12)
    results = generate(tiny, tokenizer, PROMPTS, settings, method="static")
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    expected = tiny.generate(**batch, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert [r.token_ids for r in results] == expected[:, batch.input_ids.shape[1]:].tolist()
    assert model_device(tiny).type == "cpu"


def test_engine_uses_whichever_blas_is_faster(monkeypatch, tokenizer):
    import helpers.generation.backends.cpu_engine as cpu_engine

    model = tiny_model("pre-ln", seed=4)
    reference = generate(model, tokenizer, "Hi", GenerationSettings.greedy(max_new_tokens=8), method="cached")
    for numpy_wins in (True, False):
        monkeypatch.setattr(cpu_engine, "numpy_blas_is_faster", lambda wins=numpy_wins: wins)
        cpu_engine.drop_engine(model)
        result = generate(model, tokenizer, "Hi", GenerationSettings.greedy(max_new_tokens=8), method="cpu-fast")
        assert result.token_ids == reference.token_ids and model._helpers_cpu_engine.numpy_blas is numpy_wins


def test_engine_attention_matches_sdpa_reference(tiny):
    q = torch.randn(1, 4, 1, 16)
    k = torch.randn(1, 4, 7, 16)
    v = torch.randn(1, 4, 7, 16)
    manual = torch.softmax(q @ k.transpose(-1, -2) * 16 ** -0.5, -1) @ v
    torch.testing.assert_close(F.scaled_dot_product_attention(q * 16 ** -0.5, k, v, scale=1.0), manual)
