"""The benchmark harness runs every method, its figures are positive and consistent, its JSON has a schema."""

import json

from helpers.__main__ import main
from helpers.benchmark import METHODS, measure, prompt_of_length
from helpers.loading import load_model


def test_prompt_of_length_is_exact(tokenizer):
    for n in (1, 2, 10, 37):
        assert len(tokenizer(prompt_of_length(tokenizer, n)).input_ids) == n


def test_every_method_measures_the_same_tokens(tiny_pre_folder):
    model, tokenizer, _ = load_model(str(tiny_pre_folder))
    results = [measure(model, tokenizer, m, prompt_tokens=6, new_tokens=9, repeats=2) for m in METHODS]
    for r in results:
        assert r.token_ids == results[0].token_ids and len(r.token_ids) == 9
        assert r.tokens_per_second > 0 and r.total_seconds > 0 and r.peak_memory_bytes > 0
        assert r.tokens_per_second == r.batch * r.new_tokens / r.total_seconds
        assert 0 < r.time_to_first_token < r.total_seconds and len(r.runs_seconds) == 2


def test_bench_command_writes_results_with_hardware_facts(tiny_pre_folder, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", str(tiny_pre_folder), "--new-tokens", "5", "--repeats", "1", "--batch", "2",
                 "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert {"model", "parameters", "dtype", "device", "hardware", "results"} <= set(data)
    assert {"cpu", "cpu_count", "ram_total_bytes", "torch", "transformers", "date"} <= set(data["hardware"])
    assert [r["method"] for r in data["results"]] == list(METHODS)
    assert all(r["batch"] == 2 and r["new_tokens"] == 5 for r in data["results"])
    assert "tokens/s" in capsys.readouterr().out


def test_bench_rejects_unknown_methods(capsys):
    assert main(["bench", "--methods", "warp-drive"]) == 2
    assert "unknown method" in capsys.readouterr().err
