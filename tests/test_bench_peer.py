"""The CTranslate2 peer rows in `bench`: the conversion is cached, CTranslate2's greedy tokens are transformers',
the greedy-prefix metric, and the rows left out with one line where ctranslate2 is not installed."""

import json
import os
import statistics
import sys

import ctranslate2  # in requirements-test.txt: the tests run where the peer does
import pytest
import torch
from tiny_models import save_tiny_model, tiny_model

from helpers.analysis.bench_quality import Quality, greedy_prefix, prefix_text, quality_against
from helpers.analysis.benchmark import Report, run_suite
from helpers.analysis.peer_ctranslate2 import PeerModel, converted, missing_reason, run_peer
from helpers.analysis.plots import benchmark_figure
from helpers.cli.main import main
from helpers.opt.sizes import size_from_config


@pytest.mark.parametrize("reference, tokens, kept", [
    ([5, 6, 7, 8], [5, 6, 7, 8], 4),  # equal: all of them
    ([5, 6, 7, 8], [9, 6, 7, 8], 0),  # differ at the first token: none, whatever follows
    ([5, 6, 7, 8], [5, 6, 7, 9], 3),  # differ at the last
    ([5, 6, 7, 8], [5, 9, 7, 8], 1),  # later agreement does not count: the reader's text has left
    ([], [], 0),
    ([5, 6, 7], [5, 6], 2),  # a shorter run keeps what it has
])
def test_greedy_prefix_counts_tokens_before_the_first_difference(reference, tokens, kept):
    assert greedy_prefix(reference, tokens) == kept


def test_prefix_text_says_what_the_reader_keeps():
    quality = Quality("float32", 0.5, 0.97, False, greedy_prefix_tokens=14, compared_tokens=128,
                      greedy_prefix_fraction=14 / 128)
    assert prefix_text(quality) == "the first 14 of 128 tokens (11%)"
    assert prefix_text(Quality("float32", 0.0, 1.0, True, 128, 128, 1.0)) == "all 128 tokens"
    assert prefix_text(Quality("float32", 0.0, 1.0, True)) == ""  # read from an older result


def test_quality_reports_the_prefix_beside_the_teacher_forced_agreement(tokenizer):
    model = tiny_model("pre-ln", seed=3)
    reference = [100, 200, 300, 400, 500, 600]
    same = quality_against(model, model, tokenizer, "Hello there", reference, reference)
    assert same.greedy_prefix_tokens == 6 and same.greedy_prefix_fraction == 1 and same.compared_tokens == 6
    assert same.max_logit_error == 0 and same.greedy_agreement == 1 and same.same_greedy_tokens
    changed = quality_against(model, model, tokenizer, "Hello there", reference, [100, 200, 7, 400, 500, 600])
    # the same model teacher-forced agrees everywhere; the free-running text left the reference at token 3
    assert changed.greedy_agreement == 1 and changed.greedy_prefix_tokens == 2
    assert changed.greedy_prefix_fraction == pytest.approx(2 / 6) and not changed.same_greedy_tokens


def test_the_conversion_is_cached_by_content_and_redone_when_the_source_changes(tmp_path, tokenizer, monkeypatch):
    calls = []
    real = ctranslate2.converters.TransformersConverter.convert

    def counting(self, *args, **kwargs):
        calls.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ctranslate2.converters.TransformersConverter, "convert", counting)
    source, cache = tmp_path / "model", tmp_path / "cache"
    tiny_model("pre-ln", seed=1).save_pretrained(source)  # no tokenizer files: the bench's random-weight folder
    first, made = converted(source, "float32", tokenizer, root=cache)
    assert made and (first / "model.bin").is_file() and len(calls) == 1
    again, made = converted(source, "float32", tokenizer, root=cache)
    assert again == first and not made and len(calls) == 1
    tiny_model("pre-ln", seed=1).save_pretrained(source)  # written afresh, the same weights: still cached
    assert converted(source, "float32", tokenizer, root=cache) == (first, False) and len(calls) == 1
    int8, made = converted(source, "int8", tokenizer, root=cache)
    assert made and int8 != first and len(calls) == 2
    tiny_model("pre-ln", seed=2).save_pretrained(source)  # other weights: converted again
    changed, made = converted(source, "float32", tokenizer, root=cache)
    assert made and changed != first and len(calls) == 3
    assert not [p for p in cache.iterdir() if p.name.startswith(".converting")]  # no half-written entry left
    (changed / "model.bin").unlink()  # an entry broken by hand: converted again, in its place
    assert converted(source, "float32", tokenizer, root=cache) == (changed, True) and (changed / "model.bin").is_file()


@pytest.mark.parametrize("variant", ["pre-ln", "post-ln"])
def test_ctranslate2_greedy_tokens_are_model_generate_s(tmp_path, tokenizer, variant):
    """Against what someone else wrote: CTranslate2's fp32 greedy continuation is transformers' model.generate's,
    and its logits teacher-forced are transformers' to float32 rounding."""
    folder = save_tiny_model(tmp_path / "model", variant, seed=6)
    model = tiny_model(variant, seed=6)
    path, _ = converted(folder, "float32", tokenizer, root=tmp_path / "cache")
    peer = PeerModel(path, "float32", size_from_config(model.config))
    prompts = ["The quick brown fox", "Hello"]
    got, first_token_time = run_peer(peer, tokenizer, prompts, 12)
    assert first_token_time is None
    for prompt, tokens in zip(prompts, got):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            want = model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)[0, ids.shape[1]:]
        assert tokens == want.tolist()
    quality = quality_against(peer, model, tokenizer, prompts[0], got[0], got[0])
    assert quality.max_logit_error < 1e-3 and quality.greedy_agreement == 1 and quality.greedy_prefix_fraction == 1
    assert peer.bytes_per_decode_step(0, 1) == (path / "model.bin").stat().st_size
    assert peer.process.pid != os.getpid() and peer.process.poll() is None  # CTranslate2 runs in a process of its own
    peer.close()
    assert peer.process.poll() is not None


def test_a_peer_process_that_ends_is_reported_on_each_request(tmp_path, tokenizer):
    folder = save_tiny_model(tmp_path / "model", "pre-ln", seed=6)
    path, _ = converted(folder, "float32", tokenizer, root=tmp_path / "cache")
    peer = PeerModel(path, "float32", size_from_config(tiny_model("pre-ln", seed=6).config))
    assert len(peer.greedy([["</s>", "Hello"]], 3)[0]) == 3
    peer.process.kill()
    peer.process.wait()
    for _ in range(2):
        with pytest.raises(RuntimeError, match="CTranslate2's process for .* ended"):
            peer.greedy([["</s>", "Hello"]], 3)


def test_bench_adds_the_peer_rows_labelled_as_a_peer(tiny_pre_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", "--model", str(tiny_pre_folder), "--new-tokens", "6", "--repeats", "1",
                 "--methods", "auto,auto+int8-cpu,ctranslate2,ctranslate2+int8", "--json", str(out), "--plot", str(png)])
    assert code == 0
    data = json.loads(out.read_text())
    rows = {r["method"]: r for r in data["results"]}
    assert list(rows) == ["auto", "auto+int8-cpu", "ctranslate2", "ctranslate2+int8"]
    assert rows["ctranslate2"]["peer"] == f"CTranslate2 {ctranslate2.__version__} (peer, not ours)"
    assert rows["auto"]["peer"] is None and rows["auto+int8-cpu"]["peer"] is None
    assert rows["ctranslate2"]["token_ids"] == rows["auto"]["token_ids"]  # fp32: the same text
    fp32 = rows["ctranslate2"]["quality"]
    assert fp32["greedy_prefix_tokens"] == fp32["compared_tokens"] == 6 and fp32["max_logit_error"] < 1e-3
    for name in ("auto+int8-cpu", "ctranslate2+int8"):
        q = rows[name]["quality"]
        assert q["greedy_prefix_tokens"] == greedy_prefix(rows["auto"]["token_ids"], rows[name]["token_ids"])
        assert 0 <= q["greedy_agreement"] <= 1 and q["max_logit_error"] > 0
    assert rows["ctranslate2+int8"]["weight_bytes"] < 0.5 * rows["ctranslate2"]["weight_bytes"]
    assert data["hardware"]["ctranslate2"] == ctranslate2.__version__ and data["settings"]["peers_left_out"] is None
    printed = capsys.readouterr()
    assert "ctranslate2 (peer)" in printed.out and "teacher-forced" in printed.out and "all 6 tokens" in printed.out
    assert "converted into" in printed.err
    main(["bench", "--model", str(tiny_pre_folder), "--new-tokens", "2", "--repeats", "1", "--methods", "ctranslate2"])
    assert "taken from the cache" in capsys.readouterr().err
    labels = [t.get_text() for t in benchmark_figure(data).axes[0].get_yticklabels()]
    assert labels == ["auto", "auto+int8-cpu", "ctranslate2 (peer)", "ctranslate2+int8 (peer)"] and png.stat().st_size
    report = Report.read(out)  # read back: the new quality fields come back as they were written
    assert report.measurements[2].quality.greedy_prefix_tokens == 6 and report.measurements[2].peer


def test_without_ctranslate2_the_peer_rows_are_left_out_in_one_line(tiny_pre_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 raises ImportError
    assert "not installed" in missing_reason()
    lines = []
    report = run_suite(str(tiny_pre_folder), ["cached", "ctranslate2", "ctranslate2+int8"], new_tokens=3, repeats=1,
                       progress=lines.append)
    assert [m.method for m in report.measurements] == ["cached"]
    left_out = [line for line in lines if "left out" in line]
    assert len(left_out) == 1 and "ctranslate2, ctranslate2+int8" in left_out[0] and "pip install ctranslate2" in left_out[0]
    assert report.settings["peers_left_out"] and report.facts["ctranslate2"] is None


def test_on_the_cpu_the_methods_take_turns_and_each_row_merges_its_runs(tiny_pre_folder):
    lines = []
    report = run_suite(str(tiny_pre_folder), ["cached", "auto", "auto+int8-cpu"], new_tokens=4, repeats=3,
                       progress=lines.append)
    turns = [line.split(":")[0] for line in lines if "round" in line]
    assert turns == ["cached", "auto", "auto+int8-cpu"] * 3 and "round 3 of 3" in lines[-1]
    for m in report.measurements:
        assert m.repeats == 3 and len(m.runs_seconds) == 3 and len(m.bandwidths) == 3
        assert m.total_seconds == statistics.median(m.runs_seconds)
        assert m.tokens_per_second == pytest.approx(4 / m.total_seconds) and m.first_call_seconds > 0
    cached, auto, int8 = report.measurements
    assert cached.token_ids == auto.token_ids and cached.quality is None
    assert int8.quality.compared_tokens == 4 and int8.quality.greedy_prefix_tokens == greedy_prefix(
        cached.token_ids, int8.token_ids)
