"""The decoding backends' registry: what each declares is what it does, and one entry is all a new one needs."""

import dataclasses
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from helpers.errors import SettingsError
from helpers.generation.backends import registry
from helpers.generation.backends.base import Backend, DecodeJob, DecodeStep
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


def test_every_mode_has_settings_here_and_a_backend_auto_picks():
    assert set(SETTINGS) == set(registry.MODE_NAMES)
    for mode in registry.MODE_NAMES:
        assert any(b.chosen_by_auto and mode in b.modes for b in registry.BACKENDS.values()), mode


@pytest.mark.parametrize("name", list(registry.BACKENDS))
def test_a_backend_yields_decode_steps_with_the_greedy_tokens_of_model_generate(tiny, tokenizer, name):
    backend = registry.BACKENDS[name]
    ids = encode_prompt(tokenizer, PROMPT)
    job = DecodeJob(tiny, tokenizer, [ids], GenerationSettings.greedy(max_new_tokens=8), 8, logprobs=True,
                    top_logprobs=2)
    steps = list(backend.steps(job))
    assert steps and all(isinstance(s, DecodeStep) and len(s.tokens) == 1 for s in steps)
    expected = tiny.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):]
    assert [s.tokens[0] for s in steps] == expected.tolist()
    if backend.carries_logprobs:  # what it declares: every step holds the model's log-probabilities
        scored = forward_logprobs(tiny, ids, expected.tolist())
        assert [s.logprobs[0] for s in steps] == pytest.approx(scored, abs=1e-4)
        assert all(len(s.top[0]) == 2 and s.top[0][0][1] >= s.top[0][1][1] for s in steps)
    else:
        assert all(s.logprobs is None for s in steps)


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
    assert registry.MODE_NAMES[mode] in message and "method='auto'" in message
    assert all(f"'{b.name}'" in message for b in registry.BACKENDS.values() if mode in b.modes)
    assert (backend.why_not.get(mode, "") in message) and ("transformers 5" in message) == ("transformers 5" in
                                                                                        backend.why_not.get(mode, ""))


def test_an_unknown_method_is_refused_before_the_prompt_is_looked_at(tiny, tokenizer):
    with pytest.raises(SettingsError, match="Unknown method 'warp'"):
        generate(tiny, tokenizer, "word " * 5000, method="warp")  # too long for the context, but that comes later


@pytest.mark.parametrize("mode", list(SETTINGS))
def test_auto_is_the_first_backend_that_can_and_should(tiny, tokenizer, mode):
    for batch in (1, 2):
        chosen = registry.choose_backend("auto", tiny, SETTINGS[mode], batch)
        earlier = list(registry.BACKENDS.values())[: list(registry.BACKENDS).index(chosen.name)]
        assert mode in chosen.modes and chosen.cannot_run(tiny, batch) is None
        assert not any(b.chosen_by_auto and mode in b.modes and b.cannot_run(tiny, batch) is None
                       and b.chosen_by_auto(tiny, batch) for b in earlier)


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
            yield DecodeStep(tokens)

    toy = Backend("toy", "a test's backend", frozenset({"greedy"}), eos_first)
    monkeypatch.setitem(registry.BACKENDS, "toy", toy)
    greedy = SETTINGS["greedy"]
    result = generate(tiny, tokenizer, PROMPT, greedy, method="toy", logprobs=True)
    assert result.method == "toy" and result.token_ids == generate(tiny, tokenizer, PROMPT, greedy).token_ids
    assert all(t.logprob is not None for t in result.tokens)  # it declares none: scored afterwards
    assert "".join(stream(tiny, tokenizer, PROMPT, greedy, method="toy")) == result.text
    with pytest.raises(SettingsError, match="does greedy decoding only, not sampling"):
        generate(tiny, tokenizer, PROMPT, SETTINGS["sample"], method="toy")
    assert registry.choose_backend("auto", tiny, greedy, 1).name != "toy"  # never auto's pick unless it says so
    monkeypatch.setitem(registry.BACKENDS, "toy", dataclasses.replace(toy, chosen_by_auto=lambda m, b: True))
    monkeypatch.setattr(registry, "BACKENDS", {"toy": registry.BACKENDS["toy"], **registry.BACKENDS})
    assert generate(tiny, tokenizer, PROMPT, greedy).method == "toy"


def test_the_readme_table_is_the_registry():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    table = text.split("<!-- backends:start -->")[1].split("<!-- backends:end -->")[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.strip().splitlines()[2:]]
    assert rows == [[f"`{b.name}`", b.summary, ", ".join(m for m in registry.MODE_NAMES if m in b.modes),
                     "from its steps" if b.carries_logprobs else "scored afterwards",
                     "yes" if b.chosen_by_auto else "no"] for b in registry.BACKENDS.values()]
