"""Repetition measures on hand-made sequences with known values; log-probabilities and perplexity
against a direct computation, sliding windows past the context included."""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_model

from helpers.analysis.metrics import Loop, distinct_n, longest_loop, perplexity, repeated_ngram_rate, repetition
from helpers.generation.scoring import token_logprobs
from helpers.opt.tokenizer import encode_prompt

SEED_125M = ["Natural", "language", "processing", "is", "a", "subfield", "of", "linguistics"] + ["4090"] * 29


@pytest.mark.parametrize("tokens, n, expected", [
    ("a b c d".split(), 1, 1.0),
    ("a a a a".split(), 1, 0.25),
    ("a b a b".split(), 2, 2 / 3),  # ab, ba, ab
    ("a b a b".split(), 3, 1.0),  # aba, bab
    ([], 2, 1.0),
    (["a"], 2, 1.0),
    (SEED_125M, 1, 9 / 37),
])
def test_distinct_n(tokens, n, expected):
    assert distinct_n(tokens, n) == pytest.approx(expected)


@pytest.mark.parametrize("tokens, n, expected", [
    ("a b c d".split(), 1, 0.0),
    ("a a a a".split(), 1, 0.75),
    ("a b a b a b".split(), 2, 3 / 5),  # ab ba [ab ba ab]
    ("x y z x y z".split(), 3, 1 / 4),  # xyz yzx zxy [xyz]
    (SEED_125M, 3, 26 / 35),  # of the 35 trigrams, the '4090 4090 4090' ones after the first repeat
])
def test_repeated_ngram_rate(tokens, n, expected):
    assert repeated_ngram_rate(tokens, n) == pytest.approx(expected)


@pytest.mark.parametrize("tokens, expected", [
    ("a b c d e".split(), Loop(0, 0, 0)),
    ("a b c a".split(), Loop(0, 0, 0)),  # a token seen again is not a loop
    ("x a b c a b c y".split(), Loop(1, 3, 6)),
    ("a a a a".split(), Loop(0, 1, 4)),
    ("a b a b a".split(), Loop(0, 2, 5)),
    ("q w e r t y r t y r t y".split(), Loop(3, 3, 9)),
    (SEED_125M, Loop(8, 1, 29)),
])
def test_longest_loop(tokens, expected):
    assert longest_loop(tokens) == expected


def test_repetition_bundles_the_measures():
    r = repetition(SEED_125M)
    assert (r.longest_loop, r.loop_period) == (29, 1) and r.distinct_1 == pytest.approx(9 / 37)
    assert set(r.as_dict()) == {"distinct_1", "distinct_2", "distinct_3", "repeated_3gram_rate", "longest_loop",
                                "loop_period"}


@pytest.fixture(scope="module")
def short_model():
    return tiny_model("pre-ln", seed=7, max_position_embeddings=64)


def _direct(model, ids):
    with torch.no_grad():
        logprobs = F.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return [float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_token_logprobs_match_a_direct_forward(tiny, tokenizer):
    ids = encode_prompt(tokenizer, "Natural language processing is a subfield of linguistics")
    assert token_logprobs(tiny, ids) == pytest.approx(_direct(tiny, ids), abs=1e-5)
    assert token_logprobs(tiny, ids, start=4) == pytest.approx(_direct(tiny, ids)[3:], abs=1e-5)


def test_sliding_windows_past_the_context_score_every_token_once(short_model):
    ids = [2] + list(range(100, 250))  # 151 tokens on a model of 64 positions
    scores = token_logprobs(short_model, ids, window=64, stride=16)
    assert len(scores) == 150 and all(math.isfinite(s) for s in scores)
    assert scores[:63] == pytest.approx(_direct(short_model, ids[:64]), abs=1e-5)  # the first window as is
    # windows end at 64, 80, 96, 112, ...: position 100 is scored in the one spanning 48..112, which
    # starts with BOS in place of token 48, so with 52 tokens of context (HF's recipe: 48 to 63)
    window = [2] + ids[49:101]
    assert scores[99] == pytest.approx(_direct(short_model, window)[-1], abs=1e-5)


def test_perplexity_is_exp_of_the_mean_negative_log_likelihood(tiny, tokenizer):
    context, text = "The weather today", " is sunny and warm."
    ids = encode_prompt(tokenizer, context)
    body = tokenizer(text, add_special_tokens=False).input_ids
    direct = _direct(tiny, ids + body)[len(ids) - 1:]
    assert perplexity(tiny, tokenizer, text, context=context) == pytest.approx(math.exp(-sum(direct) / len(direct)),
                                                                               rel=1e-5)
    uniform = math.exp(-math.log(1 / 50272))
    assert 1 < perplexity(tiny, tokenizer, text) < 10 * uniform


def test_perplexity_of_long_text_and_bad_input(short_model, tokenizer):
    text = " ".join(["hello world"] * 80)  # about 160 tokens on 64 positions
    assert math.isfinite(perplexity(short_model, tokenizer, text, window=64, stride=32))
    with pytest.raises(ValueError, match="no text"):
        perplexity(short_model, tokenizer, "")
    with pytest.raises(ValueError, match="stride"):
        token_logprobs(short_model, [2, 3, 4], window=64, stride=64)
