"""The hosted API's completion call: n, best_of, echo, logprobs with alternatives, stop, min/max tokens."""

import math

import pytest

from helpers.errors import SettingsError
from helpers.generation.completions import complete
from helpers.generation.run import generate
from helpers.generation.scoring import token_logprobs
from helpers.generation.settings import GenerationSettings

PROMPT = "Natural language processing is a subfield of"


def test_response_shape_and_usage(tiny, tokenizer):
    out = complete(tiny, tokenizer, PROMPT, max_tokens=7, min_tokens=7, seed=1)
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    (choice,) = out["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"} and choice["logprobs"] is None
    assert choice["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15}


def test_temperature_zero_is_greedy(tiny, tokenizer):
    out = complete(tiny, tokenizer, PROMPT, max_tokens=10, temperature=0)
    assert out["choices"][0]["text"] == generate(tiny, tokenizer, PROMPT, GenerationSettings.greedy(10)).text


def test_n_choices_per_prompt_and_a_seed_repeats_them(tiny, tokenizer):
    out = complete(tiny, tokenizer, [PROMPT, "Hello"], max_tokens=6, n=3, seed=4)
    assert [c["index"] for c in out["choices"]] == list(range(6))
    texts = [c["text"] for c in out["choices"]]
    assert len(set(texts[:3])) > 1  # three different samples
    assert [c["text"] for c in complete(tiny, tokenizer, [PROMPT, "Hello"], max_tokens=6, n=3, seed=4)["choices"]] == texts


def test_best_of_keeps_the_most_likely_per_token(tiny, tokenizer):
    out = complete(tiny, tokenizer, PROMPT, max_tokens=6, n=2, best_of=5, seed=3, logprobs=0)
    everything = complete(tiny, tokenizer, PROMPT, max_tokens=6, n=5, seed=3, logprobs=0)

    def mean(choice):
        return sum(choice["logprobs"]["token_logprobs"]) / len(choice["logprobs"]["token_logprobs"])

    ranked = sorted(everything["choices"], key=mean, reverse=True)
    assert [c["text"] for c in out["choices"]] == [c["text"] for c in ranked[:2]]
    assert mean(out["choices"][0]) >= mean(out["choices"][1])


def test_logprobs_with_alternatives(tiny, tokenizer):
    out = complete(tiny, tokenizer, PROMPT, max_tokens=5, temperature=0, logprobs=3)
    block = out["choices"][0]["logprobs"]
    assert len(block["tokens"]) == len(block["token_logprobs"]) == len(block["top_logprobs"]) == 5
    assert "".join(block["tokens"]) == out["choices"][0]["text"]
    assert block["text_offset"][0] == 0 and block["text_offset"][1] == len(block["tokens"][0])
    for token, score, top in zip(block["tokens"], block["token_logprobs"], block["top_logprobs"]):
        assert len(top) == 3 and max(top.values()) == pytest.approx(score, abs=1e-5)  # greedy: the best
        assert token in top


def test_echo_returns_and_scores_the_prompt(tiny, tokenizer):
    out = complete(tiny, tokenizer, PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=1)
    choice = out["choices"][0]
    assert choice["text"].startswith(PROMPT)
    block = choice["logprobs"]
    prompt_ids = tokenizer(PROMPT).input_ids
    assert len(block["tokens"]) == len(prompt_ids) - 1 + 4
    assert block["token_logprobs"][:8] == pytest.approx(token_logprobs(tiny, prompt_ids), abs=1e-5)
    assert block["top_logprobs"][:8] == [None] * 8 and block["text_offset"][0] == 0


def test_stop_strings_end_a_choice_before_them(tiny, tokenizer):
    full = complete(tiny, tokenizer, PROMPT, max_tokens=12, temperature=0)["choices"][0]["text"]
    cut = full[len(full) // 2: len(full) // 2 + 3]
    choice = complete(tiny, tokenizer, PROMPT, max_tokens=12, temperature=0, stop=[cut, "never there"])["choices"][0]
    assert choice["text"] == full[: full.index(cut)] and choice["finish_reason"] == "stop"


def test_min_tokens_forbids_an_early_end(tiny, tokenizer):
    out = complete(tiny, tokenizer, PROMPT, max_tokens=20, min_tokens=20, seed=0, n=4)
    assert out["usage"]["completion_tokens"] == 80


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "n must be"), (dict(n=3, best_of=2), "at least n"), (dict(logprobs=50), "logprobs"),
    (dict(stop=["a", "b", "c", "d", "e"]), "At most 4"), (dict(temperature=-1), "temperature"),
    (dict(temperature=0, best_of=3), "needs sampling"), (dict(max_tokens=0), "max_tokens"),
    (dict(min_tokens=5, max_tokens=2), "min_new_tokens"), (dict(top_p=0), "top_p"),
])
def test_impossible_requests(tiny, tokenizer, kwargs, match):
    with pytest.raises(SettingsError, match=match):
        complete(tiny, tokenizer, PROMPT, **kwargs)


def test_scores_are_finite_probabilities(tiny, tokenizer):
    block = complete(tiny, tokenizer, PROMPT, max_tokens=6, logprobs=5, seed=9)["choices"][0]["logprobs"]
    assert all(s <= 0 and math.isfinite(s) for s in block["token_logprobs"])
