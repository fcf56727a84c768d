"""The decoding backends' registry: what each declares is what it does, and one entry is all a new one needs."""

import dataclasses
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model
from transformers import OPTForCausalLM

from helpers.errors import SettingsError
from helpers.generation.backends import registry
from helpers.generation.backends.base import Backend, DecodeJob, RunControl
from helpers.generation.results import TokenInfo
from helpers.generation.run import generate
from helpers.generation.settings import GenerationSettings
from helpers.generation.streaming import stream
from helpers.opt.tokenizer import encode_prompt

SETTINGS = {  # one GenerationSettings per mode
    "greedy": GenerationSettings.greedy(max_new_tokens=8, min_new_tokens=8),
    "sample": GenerationSettings(max_new_tokens=8, min_new_tokens=8, seed=3),
    "beam": GenerationSettings.greedy(max_new_tokens=8, min_new_tokens=8, num_beams=3),
    "beam-sample": GenerationSettings(max_new_tokens=8, min_new_tokens=8, num_beams=2, seed=3),
    "contrastive": GenerationSettings.greedy(max_new_tokens=8, min_new_tokens=8, penalty_alpha=0.6, top_k=4),
}
PROMPT = "Natural language processing is a subfield of"


def forward_logprobs(model, prompt_ids: list[int], new_ids: list[int]) -> list[float]:
    """log p(each new token) from one plain forward pass: the definition, not the package's scoring code."""
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + new_ids])).logits[0, len(prompt_ids) - 1:-1].float()
    return torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(new_ids)[:, None]).squeeze(1).tolist()


def emulate_cuda(monkeypatch) -> None:
    """The model reads as being on CUDA to what picks a backend (its tensors stay on the CPU: only the choice is
    asked): the registry's `model_device` and `model.device`, which the CPU engine's `supported` reads."""
    monkeypatch.setattr(registry, "model_device", lambda model: torch.device("cuda"))
    monkeypatch.setattr(OPTForCausalLM, "device", property(lambda self: torch.device("cuda")))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_auto_finds_a_backend_for_every_mode_device_and_batch(tiny, monkeypatch, device):
    assert set(SETTINGS) == set(registry.MODE_NAMES)
    if device == "cuda":
        emulate_cuda(monkeypatch)
    for mode, settings in SETTINGS.items():
        for batch in (1, 2):
            chosen = registry.choose_backend("auto", tiny, settings, batch)  # an error where nothing auto may pick runs it
            assert mode in chosen.modes and chosen.cannot_run(tiny, batch) is None, (mode, batch, chosen.name)
            assert chosen.chosen_by_auto is not None and chosen.chosen_by_auto(tiny, batch), (mode, batch, chosen.name)


@pytest.mark.parametrize("name", list(registry.BACKENDS))
def test_a_backend_yields_steps_with_the_greedy_tokens_of_model_generate(tiny, tokenizer, name):
    backend = registry.BACKENDS[name]
    ids = encode_prompt(tokenizer, PROMPT)
    job = DecodeJob(tiny, tokenizer, [ids], GenerationSettings.greedy(max_new_tokens=8), 8, logprobs=True,
                    top_logprobs=2)
    steps = list(backend.steps(job))
    assert steps and all(len(s) == 1 and isinstance(s[0], TokenInfo) for s in steps)  # one row: one token a step
    expected = tiny.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):]
    assert [s[0].id for s in steps] == expected.tolist()
    assert [s[0].text for s in steps] == [tokenizer.decode([t]) for t in expected.tolist()]
    if backend.carries_logprobs:  # what it declares: every step holds the model's log-probabilities
        scored = forward_logprobs(tiny, ids, expected.tolist())
        assert [s[0].logprob for s in steps] == pytest.approx(scored, abs=1e-4)
        assert all(len(s[0].top) == 2 and s[0].top[0][2] >= s[0].top[1][2] for s in steps)
        assert all(s[0].top[0][1] == tokenizer.decode([s[0].top[0][0]]) for s in steps)
    else:
        assert all(s[0].logprob is None and s[0].top == [] for s in steps)


@pytest.mark.parametrize("name", list(registry.BACKENDS))
@pytest.mark.parametrize("mode", list(SETTINGS))
def test_a_backend_runs_the_modes_it_declares_and_refuses_the_others(tiny, tokenizer, name, mode):
    backend = registry.BACKENDS[name]
    if mode in backend.modes:
        result = generate(tiny, tokenizer, PROMPT, SETTINGS[mode], method=name, top_logprobs=2)
        assert result.method == name and 1 <= len(result.token_ids) <= 8
        scored = forward_logprobs(tiny, result.prompt_token_ids, result.token_ids)
        assert [t.logprob for t in result.tokens] == pytest.approx(scored, abs=1e-4)  # streamed or scored afterwards
        return
    with pytest.raises(SettingsError) as refused:
        generate(tiny, tokenizer, PROMPT, SETTINGS[mode], method=name)
    message = str(refused.value)
    assert name in message and registry.MODE_NAMES[mode] in message, message  # what was refused, and for what
    runs_it = {b.name for b in registry.BACKENDS.values() if mode in b.modes}
    suggested = {b.name for b in registry.BACKENDS.values() if f"'{b.name}'" in message} - {name}
    assert suggested and suggested <= runs_it, message  # alternatives, and only ones that run this mode
    if mode in backend.why_not:
        assert backend.why_not[mode] in message, message


def test_a_refusal_offers_only_methods_that_run_this_model_and_batch(tiny, tokenizer):
    """Two prompts: the CPU engine (one prompt only) runs greedy decoding but is not offered for it."""
    with pytest.raises(SettingsError) as refused:
        generate(tiny, tokenizer, [PROMPT, "Hello"], SETTINGS["sample"], method="tutorial")
    message = str(refused.value)
    assert "'cached'" in message and "'cpu-fast'" not in message, message
    assert "do_sample=False, num_beams=1, penalty_alpha=0" in message, message  # what makes it greedy


def test_the_tutorial_loop_starts_no_further_prompt_after_stop(tiny, tokenizer):
    prompts = [encode_prompt(tokenizer, p) for p in (PROMPT, "Hello")]
    control = RunControl()
    job = DecodeJob(tiny, tokenizer, prompts, SETTINGS["greedy"], 8, False, 0, control)
    calls = []
    handle = tiny.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        steps = registry.BACKENDS["tutorial"].steps(job)
        first = next(steps)
        control.stop()
        assert first[1] is None and list(steps) == [] and len(calls) == 1
    finally:
        handle.remove()


def test_an_unknown_method_is_refused_before_the_prompt_is_looked_at(tiny, tokenizer):
    with pytest.raises(SettingsError, match="Unknown method 'warp'"):
        generate(tiny, tokenizer, "word " * 5000, method="warp")  # too long for the context, but that comes later


# (device, mode, prompts, quantized) -> auto's pick: the rule before the registry (c3f961a's _choose_method):
# beam modes -> hf; contrastive -> cached; the CPU engine where it runs; one unquantized prompt on CUDA -> static.
AUTO_CASES = [
    ("cpu", "greedy", 1, False, "cpu-fast"),
    ("cpu", "sample", 1, False, "cpu-fast"),
    ("cpu", "greedy", 2, False, "cached"),  # the engine runs one sequence
    ("cpu", "sample", 2, False, "cached"),
    ("cpu", "greedy", 1, True, "cached"),  # nor a quantized model
    ("cpu", "contrastive", 1, False, "cached"),
    ("cpu", "beam", 1, False, "hf"),
    ("cpu", "beam-sample", 2, False, "hf"),
    ("cuda", "greedy", 1, False, "static"),
    ("cuda", "sample", 1, False, "static"),
    ("cuda", "beam", 1, False, "hf"),
    ("cuda", "beam-sample", 1, False, "hf"),
    ("cuda", "contrastive", 1, False, "cached"),
    ("cuda", "greedy", 2, False, "cached"),
    ("cuda", "sample", 2, False, "cached"),
    ("cuda", "greedy", 1, True, "cached"),  # bitsandbytes' layers don't compile
    ("cuda", "sample", 1, True, "cached"),
]


@pytest.mark.parametrize("device, mode, batch, quantized, expected", AUTO_CASES)
def test_auto_picks_what_the_rule_says(tiny, tokenizer, monkeypatch, device, mode, batch, quantized, expected):
    if quantized:
        monkeypatch.setattr(tiny, "hf_quantizer", object(), raising=False)
    if device == "cuda":
        emulate_cuda(monkeypatch)
    assert registry.choose_backend("auto", tiny, SETTINGS[mode], batch).name == expected
    if device == "cpu" and not quantized:  # and generate uses that pick
        results = generate(tiny, tokenizer, [PROMPT] * batch, SETTINGS[mode])
        assert [r.method for r in results] == [expected] * batch


def test_the_old_name_seed_is_the_tutorial_loop_with_a_deprecation_warning(tiny, tokenizer):
    with pytest.warns(DeprecationWarning, match="'seed' is deprecated.*'tutorial'"):
        assert registry.check_method("seed") == "tutorial"
    with pytest.warns(DeprecationWarning):
        assert registry.choose_backend("seed", tiny, SETTINGS["greedy"], 1).name == "tutorial"
    with pytest.warns(DeprecationWarning):
        assert generate(tiny, tokenizer, PROMPT, SETTINGS["greedy"], method="seed").method == "tutorial"


@pytest.mark.parametrize("name", list(registry.BACKENDS))
def test_log_probabilities_on_a_model_with_few_positions(tokenizer, name):
    short = tiny_model("pre-ln", seed=7, max_position_embeddings=100)  # as converted metaseq models can be
    result = generate(short, tokenizer, PROMPT, GenerationSettings.greedy(max_new_tokens=6), method=name,
                      top_logprobs=3)
    assert [t.logprob for t in result.tokens] == pytest.approx(
        forward_logprobs(short, result.prompt_token_ids, result.token_ids), abs=1e-4)
    assert all(len(t.top) == 3 for t in result.tokens)


def test_one_registry_entry_is_all_a_new_backend_needs(tiny, tokenizer, monkeypatch):
    calls = []

    def eos_first(job: DecodeJob):  # a toy backend: always the most likely token, from one full forward a step
        ids = [list(row) for row in job.prompt_ids]
        for _ in range(job.max_new_tokens):
            with torch.inference_mode():
                tokens = [int(tiny(torch.tensor([row])).logits[0, -1].argmax()) for row in ids]
            calls.append(tokens)
            for row, token in zip(ids, tokens):
                row.append(token)
            yield [job.token(token) for token in tokens]

    toy = Backend("toy", "a test's backend", frozenset({"greedy"}), eos_first)
    monkeypatch.setitem(registry.BACKENDS, "toy", toy)
    greedy = SETTINGS["greedy"]
    result = generate(tiny, tokenizer, PROMPT, greedy, method="toy", logprobs=True)
    assert result.method == "toy" and result.token_ids == generate(tiny, tokenizer, PROMPT, greedy).token_ids
    assert len(result.tokens) == len(result.token_ids) > 0  # it declares none: scored afterwards
    assert [t.id for t in result.tokens] == result.token_ids
    assert [t.logprob for t in result.tokens] == pytest.approx(
        forward_logprobs(tiny, result.prompt_token_ids, result.token_ids), abs=1e-4)
    assert "".join(stream(tiny, tokenizer, PROMPT, greedy, method="toy")) == result.text
    with pytest.raises(SettingsError, match="does greedy decoding only, not sampling"):
        generate(tiny, tokenizer, PROMPT, SETTINGS["sample"], method="toy")
    assert registry.choose_backend("auto", tiny, greedy, 1).name != "toy"  # never auto's pick unless it says so
    monkeypatch.setitem(registry.BACKENDS, "toy", dataclasses.replace(toy, chosen_by_auto=lambda m, b: True))
    monkeypatch.setattr(registry, "BACKENDS", {"toy": registry.BACKENDS["toy"], **registry.BACKENDS})
    assert generate(tiny, tokenizer, PROMPT, greedy).method == "toy"


def test_the_methods_table_in_the_docs_is_the_registry():
    text = (Path(__file__).parents[1] / "docs" / "speed.md").read_text()
    table = text.split("<!-- backends:start -->")[1].split("<!-- backends:end -->")[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.strip().splitlines()[2:]]
    assert rows == [[f"`{b.name}`", b.summary, ", ".join(m for m in registry.MODE_NAMES if m in b.modes),
                     "from its steps" if b.carries_logprobs else "scored afterwards",
                     "yes" if b.chosen_by_auto else "no"] for b in registry.BACKENDS.values()]


def test_stopping_a_beam_search_keeps_the_best_beam_at_that_step(tiny, tokenizer):
    """A Stop during an 8-beam search kept 1 token (the run replayed the final beam a token at a time and
    broke off after the first). Stopped after k steps, the result is what transformers' beam search holds at
    step k: `model.generate` limited to k new tokens."""
    k, calls = 6, []

    def step():  # a Stop click handled between two beam steps
        calls.append(1)
        if len(calls) == k:
            s.stop()

    settings = GenerationSettings.greedy(max_new_tokens=40, min_new_tokens=40, num_beams=8)
    s = stream(tiny, tokenizer, PROMPT, settings, top_logprobs=2, on_step=step)
    s.text()
    ids = torch.tensor([encode_prompt(tokenizer, PROMPT)])
    held = tiny.generate(ids, max_new_tokens=k, min_new_tokens=k, num_beams=8, do_sample=False)[0, ids.shape[1]:]
    assert s.result.finish_reason == "stopped" and s.result.token_ids == held.tolist()
    assert [t.id for t in s.result.tokens] == held.tolist() and s.result.text == tokenizer.decode(held)


@pytest.mark.parametrize("name", ["cpu-fast", "cached", "hf", "tutorial"])
def test_a_backend_ends_within_one_step_of_a_stop_and_skips_rows_marked_done(tiny, tokenizer, name):
    ids = encode_prompt(tokenizer, PROMPT)
    settings = GenerationSettings.greedy(max_new_tokens=50, min_new_tokens=50)
    control = RunControl()
    steps = registry.BACKENDS[name].steps(DecodeJob(tiny, tokenizer, [ids], settings, 50, control=control))
    first = [next(steps) for _ in range(3)]
    control.stop()
    assert len(first) == 3 and len(list(steps)) <= 1
    if name in ("cached", "tutorial"):  # the loops that step a batch row by row: a row marked done gets no token
        control = RunControl()
        with_stop = settings.replace(stop=("no such text in the output",))  # what lets a row finish before the rest
        job = DecodeJob(tiny, tokenizer, [ids, encode_prompt(tokenizer, "Hello")], with_stop, 50, control=control)
        steps = registry.BACKENDS[name].steps(job)
        next(steps)
        control.finish_row(0)
        rest = list(steps)
        assert rest and all(step[0] is None for step in rest) and any(step[1] is not None for step in rest)
