"""The comparison runs behind notebooks 03 and 04."""

import pytest
import torch
from tiny_models import tiny_model

from helpers.analysis.comparison import (
    STRATEGIES,
    add_judge_perplexity,
    compare_sizes,
    compare_strategies,
    fitting,
    loaded,
    summarize,
    tutorial_conditions,
    without_final_layer_norm,
)
from helpers.generation.settings import GenerationSettings

PROMPTS = ["Natural language processing is a subfield of", "Hello"]


def test_compare_sizes_measures_every_prompt_decoding_and_model(tmp_path, tiny_pre_folder, tiny_folder):
    decodings = {"greedy": GenerationSettings.greedy(6), "sampling": GenerationSettings(max_new_tokens=6, seed=1)}
    rows = compare_sizes([str(tiny_pre_folder), str(tmp_path / "missing")], PROMPTS, decodings)
    measured = [r for r in rows if r["decoding"] != "skipped"]
    assert len(measured) == 4
    for row in measured:
        assert row["tokens/s"] > 0 and row["peak memory GiB"] > 0 and 0 <= row["repeated 3-grams"] <= 1
        assert row["parameters"] > 1e6 and row["prompt"] in PROMPTS
    skipped = [r for r in rows if r["decoding"] == "skipped"]
    assert len(skipped) == 1 and "does not exist" in skipped[0]["text"]
    summary = summarize(rows, ("model", "decoding"), ("tokens/s", "repeated 3-grams"))
    assert len(summary) == 2 and all("tokens/s" in s for s in summary)


def test_random_weights_in_a_real_shape():
    with loaded("opt-125m", random_weights=True, device="cpu") as subject:
        assert subject.parameters == 125_239_296
        model = subject.model
    assert all(p.device.type == "meta" for p in model.parameters())  # unloaded afterwards


def test_fitting_leaves_out_what_would_only_run_from_disk(tiny_pre_folder):
    keep, left_out = fitting(["opt-125m", "opt-66b", str(tiny_pre_folder)])
    assert "opt-125m" in keep and str(tiny_pre_folder) in keep
    assert "opt-66b" in left_out


def test_compare_strategies_covers_every_strategy(tiny, tokenizer):
    rows = compare_strategies(tiny, tokenizer, PROMPTS, STRATEGIES, max_new_tokens=8)
    assert {r["decoding"] for r in rows} == set(STRATEGIES) and len(rows) == len(STRATEGIES) * 2
    greedy = [r for r in rows if r["decoding"] == "greedy"]
    no_repeat = [r for r in rows if r["decoding"] == "no repeated 3-grams"]
    assert all(r["repeated 3-grams"] == 0 for r in no_repeat)
    assert all(r["text"] for r in greedy)
    add_judge_perplexity(rows, tiny_model("post-ln", seed=5), tokenizer)
    assert all(r["judge perplexity"] > 1 for r in rows if r["text"].strip())


def test_dropping_the_final_layer_norm_changes_the_logits_and_is_undone(tokenizer):
    model = tiny_model("pre-ln", seed=2)
    ids = torch.tensor([tokenizer("Hello there").input_ids])
    with torch.no_grad():
        before = model(ids).logits
        with without_final_layer_norm(model):
            dropped = model(ids).logits
        after = model(ids).logits
    assert not torch.allclose(before, dropped) and torch.equal(before, after)
    with pytest.raises(ValueError, match="no final layer norm"):
        with without_final_layer_norm(tiny_model("post-ln")):
            pass


def test_tutorial_conditions_cover_all_combinations(tokenizer):
    rows = tutorial_conditions(tiny_model("pre-ln", seed=2), tokenizer, PROMPTS, new_tokens=10)
    combos = {(r["decoding"], r["start token"], r["final layer norm"]) for r in rows}
    assert len(combos) == 8 and len(rows) == 16
    assert all(len(tokenizer(r["text"], add_special_tokens=False).input_ids) >= 1 for r in rows)
    no_bos = next(r for r in rows if r["start token"] == "none" and r["decoding"] == "greedy"
                  and r["final layer norm"] == "kept")
    with_bos = next(r for r in rows if r["start token"] == "</s>" and r["decoding"] == "greedy"
                    and r["final layer norm"] == "kept" and r["prompt"] == no_bos["prompt"])
    assert no_bos["text"] != with_bos["text"]  # the start token matters
    post = tutorial_conditions(tiny_model("post-ln"), tokenizer, PROMPTS[:1], new_tokens=5)
    assert {r["final layer norm"] for r in post} == {"kept"} and len(post) == 4
