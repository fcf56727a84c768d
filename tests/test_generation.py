"""The 2022 tutorial's loop, the cached loop, generate() and model.generate agree; streaming, stops, log-probs."""

import threading

import pytest
import torch
import torch.nn.functional as F

from helpers.errors import PromptError, SettingsError
from helpers.generation.backends.loops import cached_greedy
from helpers.generation.backends.tutorial import tutorial_greedy
from helpers.generation.results import GenerationResult, TokenInfo, mean_logprob
from helpers.generation.run import generate
from helpers.generation.settings import GenerationSettings
from helpers.generation.streaming import stream
from helpers.opt.tokenizer import encode_prompt

PROMPTS = ["Natural language processing is a subfield of", "Today is a beautiful day and I want to",
           "Text classification is a machine learning technique", "Hi"]
GREEDY = GenerationSettings.greedy(max_new_tokens=24)


def hf_greedy(model, ids, n):
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                         min_new_tokens=n)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_all_greedy_implementations_give_identical_tokens(tiny, tokenizer, prompt):
    reference = hf_greedy(tiny, encode_prompt(tokenizer, prompt), 24)  # model.generate, not stopping at EOS
    assert len(reference) == 24
    for method in ("auto", "cached", "cpu-fast", "hf", "static", "tutorial"):
        result = generate(tiny, tokenizer, prompt, GREEDY, method=method)
        assert result.token_ids == reference[: len(result.token_ids)], method
        assert result.finish_reason == ("length" if len(result.token_ids) == 24 else "eos")


def test_the_old_loop_functions_still_work_and_say_what_replaces_them(tiny, tokenizer):
    ids = encode_prompt(tokenizer, PROMPTS[0])
    reference = hf_greedy(tiny, ids, 24)
    with pytest.warns(DeprecationWarning, match="method='tutorial'"):
        assert tutorial_greedy(tiny, ids, 24) == reference
    with pytest.warns(DeprecationWarning, match="method='cached'"):
        assert cached_greedy(tiny, ids, 24) == reference
    with pytest.warns(DeprecationWarning, match="'seed' is deprecated"):
        assert generate(tiny, tokenizer, PROMPTS[0], GREEDY, method="seed").token_ids == reference


def test_batch_with_left_padding_matches_single_prompts_and_model_generate(tiny, tokenizer):
    results = generate(tiny, tokenizer, PROMPTS, GREEDY)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    hf = tiny.generate(**batch, max_new_tokens=24, do_sample=False)[:, batch.input_ids.shape[1]:]
    tutorial_loop = generate(tiny, tokenizer, PROMPTS, GREEDY, method="tutorial")
    assert [r.token_ids for r in tutorial_loop] == [r.token_ids for r in results]
    for prompt, result, row in zip(PROMPTS, results, hf.tolist()):
        single = generate(tiny, tokenizer, prompt, GREEDY)
        assert result.token_ids == single.token_ids == row[: len(result.token_ids)]
        assert result.prompt_token_ids == encode_prompt(tokenizer, prompt)


def test_result_carries_text_ids_and_timings(tiny, tokenizer):
    result = generate(tiny, tokenizer, "Hello", GREEDY)
    assert result.text == tokenizer.decode(result.token_ids, skip_special_tokens=True)
    assert result.full_text == "Hello" + result.text
    t = result.timings
    assert t.new_tokens == len(result.token_ids) and t.total_seconds > 0 and 0 < t.time_to_first_token <= t.total_seconds
    assert t.tokens_per_second > 0 and t.decode_tokens_per_second > 0
    data = result.as_dict()
    assert {"text", "prompt_token_ids", "token_ids", "tokens_per_second", "finish_reason"} <= set(data)


def test_sampling_is_reproducible_with_a_seed_and_records_the_seed_it_drew(tiny, tokenizer):
    settings = GenerationSettings(max_new_tokens=20, temperature=1.0, top_p=0.95, seed=7)
    a, b = (generate(tiny, tokenizer, "Hello", settings) for _ in range(2))
    assert a.token_ids == b.token_ids
    assert generate(tiny, tokenizer, "Hello", settings.replace(seed=8)).token_ids != a.token_ids
    drawn = generate(tiny, tokenizer, "Hello", settings.replace(seed=None))
    assert drawn.settings.seed is not None
    assert generate(tiny, tokenizer, "Hello", drawn.settings).token_ids == drawn.token_ids


def test_stream_yields_pieces_as_produced_and_matches_generate(tiny, tokenizer):
    settings = GenerationSettings(max_new_tokens=16, seed=3)
    s = stream(tiny, tokenizer, "Hello", settings)
    pieces, seen = [], []
    for piece in s:
        pieces.append(piece)
        seen.append(len(s.token_ids))
    assert len(pieces) > 3 and seen == sorted(seen) and seen[0] < seen[-1]  # intermediate states, not one blob
    assert "".join(pieces) == s.result.text == generate(tiny, tokenizer, "Hello", settings).text


def test_stop_string_ends_the_text_before_it_and_never_streams_it(tiny, tokenizer):
    full = generate(tiny, tokenizer, "Hello", GREEDY)
    stop_at = tokenizer.decode(full.token_ids[5:7])  # two tokens from the middle
    settings = GREEDY.replace(stop=(stop_at,))
    result = generate(tiny, tokenizer, "Hello", settings)
    assert result.finish_reason == "stop"
    assert result.text == full.text[: full.text.index(stop_at)]
    streamed = "".join(stream(tiny, tokenizer, "Hello", settings))
    assert streamed == result.text and stop_at not in streamed
    hf = generate(tiny, tokenizer, "Hello", settings, method="hf")
    assert hf.text == result.text and hf.finish_reason == "stop"


def test_stop_ends_a_stream_within_one_step(tiny, tokenizer):
    s = stream(tiny, tokenizer, "Hello", GenerationSettings.greedy(max_new_tokens=200))
    for i, _ in enumerate(s):
        if i == 2:
            s.stop()
    assert s.result.finish_reason == "stopped"
    assert len(s.result.token_ids) <= 4


def test_stop_from_another_thread(tiny, tokenizer):
    s = stream(tiny, tokenizer, "Hello", GenerationSettings.greedy(max_new_tokens=400))
    started = threading.Event()

    def consume():
        for _ in s:
            started.set()

    worker = threading.Thread(target=consume)
    worker.start()
    started.wait(10)
    s.stop()
    worker.join(10)
    assert not worker.is_alive() and s.result.finish_reason == "stopped" and len(s.result.token_ids) < 400


def test_leaving_a_stream_early_counts_as_stopped(tiny, tokenizer):
    s = stream(tiny, tokenizer, "Hello", GREEDY)
    for _ in s:
        break
    assert s.result.finish_reason == "stopped"


@pytest.mark.parametrize("method", ["cached", "cpu-fast", "hf"])
def test_logprobs_are_the_models_own_and_alternatives_are_ranked(tiny, tokenizer, method):
    result = generate(tiny, tokenizer, "Hello", GenerationSettings.greedy(max_new_tokens=8), top_logprobs=5, method=method)
    ids = torch.tensor([result.prompt_token_ids + result.token_ids])
    with torch.no_grad():
        expected = F.log_softmax(tiny(ids).logits[0].float(), dim=-1)
    start = len(result.prompt_token_ids) - 1
    for i, token in enumerate(result.tokens):
        assert token.id == result.token_ids[i]
        assert token.logprob == pytest.approx(float(expected[start + i, token.id]), abs=1e-4)
        assert [t[0] for t in token.top][0] == token.id  # greedy: the pick is the most likely
        values = [t[2] for t in token.top]
        assert values == sorted(values, reverse=True) and len(values) == 5


def _naive_contrastive(model, ids, k, alpha, steps):
    """Contrastive search by its definition, re-running whole sequences (no cache)."""
    ids = list(ids)
    for _ in range(steps):
        with torch.no_grad():
            out = model.model.decoder(torch.tensor([ids])).last_hidden_state[0]
            probs = torch.softmax(model.lm_head(out[-1]), -1)
            top_p, cand = probs.topk(k)
            scores = []
            for p, c in zip(top_p, cand):
                h = model.model.decoder(torch.tensor([ids + [int(c)]])).last_hidden_state[0]
                sim = F.cosine_similarity(h[-1][None], h[:-1], dim=-1).max()
                scores.append((1 - alpha) * p - alpha * sim)
        ids.append(int(cand[int(torch.stack(scores).argmax())]))
    return ids


def test_contrastive_search_matches_its_definition(tiny, tokenizer):
    ids = encode_prompt(tokenizer, "Natural language processing is")
    settings = GenerationSettings(do_sample=False, penalty_alpha=0.6, top_k=4, max_new_tokens=10)
    expected = _naive_contrastive(tiny, ids, 4, 0.6, 10)[len(ids):]
    assert generate(tiny, tokenizer, "Natural language processing is", settings).token_ids == expected
    batch = generate(tiny, tokenizer, ["Hi", "Natural language processing is"], settings)
    assert batch[1].token_ids == expected


def test_beam_search_runs_through_model_generate(tiny, tokenizer):
    settings = GenerationSettings.greedy(max_new_tokens=8, num_beams=3)
    result = generate(tiny, tokenizer, "Hello", settings)
    ids = torch.tensor([encode_prompt(tokenizer, "Hello")])
    expected = tiny.generate(ids, max_new_tokens=8, num_beams=3, do_sample=False)[0, ids.shape[1]:].tolist()
    assert result.method == "hf" and result.token_ids == [t for t in expected if t != 2][: len(result.token_ids)]


def test_prompt_longer_than_the_context_is_a_clear_error_or_announced_truncation(tiny, tokenizer):
    long_prompt = "hello " * 2100
    with pytest.raises(PromptError, match="2048 positions.*truncate"):
        generate(tiny, tokenizer, long_prompt, GREEDY)
    with pytest.warns(UserWarning, match="dropped"):
        result = generate(tiny, tokenizer, long_prompt, GenerationSettings.greedy(max_new_tokens=4, min_new_tokens=4),
                          truncate=True)
    # the cut keeps the prompt's end and leaves room for every new token asked for (not just one)
    assert result.prompt_token_ids[0] == 2 and len(result.prompt_token_ids) == 2048 - 4
    assert result.prompt_token_ids[1:] == encode_prompt(tokenizer, long_prompt)[-(2048 - 4 - 1):]
    assert any("dropped" in note for note in result.notes) and len(result.token_ids) == 4
    assert result.finish_reason == "length"


def test_near_the_context_end_generation_stops_there_and_says_so(tiny, tokenizer):
    prompt = "hello " * 2040
    n = len(encode_prompt(tokenizer, prompt))
    result = generate(tiny, tokenizer, prompt, GenerationSettings.greedy(max_new_tokens=64))
    assert len(result.token_ids) == 2048 - n and result.finish_reason == "context"
    assert "fit" in result.notes[0]


def test_empty_prompt_generates_from_bos(tiny, tokenizer):
    result = generate(tiny, tokenizer, "", GenerationSettings.greedy(max_new_tokens=5))
    assert result.prompt_token_ids == [2] and len(result.token_ids) == 5


@pytest.mark.parametrize("bad, match", [
    ([], "No prompt"), (None, "must be text"), ([b"bytes"], "must be text"),
])
def test_bad_prompts(tiny, tokenizer, bad, match):
    with pytest.raises(PromptError, match=match):
        generate(tiny, tokenizer, bad if bad is not None else [None], GREEDY)


def test_impossible_requests_are_settings_errors(tiny, tokenizer):
    with pytest.raises(SettingsError, match="greedy"):
        generate(tiny, tokenizer, "Hi", GenerationSettings(), method="tutorial")
    with pytest.raises(SettingsError, match="Unknown method"):
        generate(tiny, tokenizer, "Hi", method="fast")
    with pytest.raises(SettingsError, match="Unknown setting"):
        generate(tiny, tokenizer, "Hi", temprature=0.5)


def test_a_prompt_of_token_ids_continues_exactly_from_there(tiny, tokenizer):
    full = generate(tiny, tokenizer, "Hello", GREEDY)
    ids = full.prompt_token_ids + full.token_ids[:5]
    resumed = generate(tiny, tokenizer, ids, GREEDY.replace(max_new_tokens=10))
    assert resumed.prompt_token_ids == ids and resumed.token_ids == full.token_ids[5:15]
    assert resumed.prompt == tokenizer.decode(ids, skip_special_tokens=True)
    assert generate(tiny, tokenizer, [ids, ids[:-1]], GREEDY.replace(max_new_tokens=3))[0].token_ids == full.token_ids[5:8]
    streamed = "".join(stream(tiny, tokenizer, ids[1:], GREEDY.replace(max_new_tokens=4)))  # BOS added when missing
    assert streamed == generate(tiny, tokenizer, ids, GREEDY.replace(max_new_tokens=4)).text
    with pytest.raises(PromptError, match="between 0 and"):
        generate(tiny, tokenizer, [2, 10**9], GREEDY)


def test_stop_also_ends_beam_search(tiny, tokenizer):
    s = stream(tiny, tokenizer, "Hello", GenerationSettings.greedy(max_new_tokens=300, num_beams=2))
    s.stop()  # pressed before the first step: model.generate must end at once
    assert "".join(s) == s.result.text and len(s.result.token_ids) <= 1 and s.result.finish_reason == "stopped"


def test_mean_log_probability_has_one_meaning(tiny, tokenizer):
    """None where no token carries a log-probability (not asked for); otherwise the mean over those that do."""
    plain = generate(tiny, tokenizer, "Hello", GenerationSettings.greedy(max_new_tokens=6))
    assert plain.tokens is None and plain.mean_logprob is None
    scored = generate(tiny, tokenizer, "Hello", GenerationSettings.greedy(max_new_tokens=6), logprobs=True)
    logprobs = [t.logprob for t in scored.tokens]
    assert scored.mean_logprob == pytest.approx(sum(logprobs) / len(logprobs)) and scored.mean_logprob < 0
    assert mean_logprob([TokenInfo(1, "a", -1.0), TokenInfo(2, "b"), TokenInfo(3, "c", -2.0)]) == -1.5
    assert mean_logprob([]) is None and isinstance(GenerationResult.mean_logprob, property)
