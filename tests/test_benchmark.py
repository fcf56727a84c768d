"""The benchmark harness on tiny models: it runs every method, its figures are positive and consistent,
the roofline arithmetic holds, and its JSON has its schema."""

import dataclasses
import json
import statistics
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from helpers.analysis.bandwidth import bytes_per_decode_step, measure_bandwidth
from helpers.analysis.bench_methods import METHODS, BenchContext, default_methods
from helpers.analysis.benchmark import SCHEMA, Report, measure, prompt_of_length, quality_against
from helpers.cli.main import main
from helpers.loading.model import load_model
from helpers.memory.bytes import kv_cache_bytes_per_token
from helpers.opt.sizes import size_from_config


def test_prompt_of_length_is_exact(tokenizer):
    for n in (1, 2, 10, 37):
        assert len(tokenizer(prompt_of_length(tokenizer, n)).input_ids) == n


def test_bandwidth_is_measured_three_ways_on_the_cpu():
    bw = measure_bandwidth("cpu", buffer_bytes=64 << 20)
    assert {"copy", "read_sum", "read_gemv", "bytes_per_second", "used"} <= set(bw)
    assert bw["bytes_per_second"] == max(bw["copy"], bw["read_sum"], bw["read_gemv"]) > 1e8


def test_bytes_per_step_counts_each_weight_once_and_the_cache():
    model = tiny_model("pre-ln")
    params = sum(p.numel() for p in model.parameters())
    positions = model.model.decoder.embed_positions.weight
    weights = 4 * (params - positions.numel() + positions.shape[1])
    assert bytes_per_decode_step(model, 0, 1) == weights
    per_token = kv_cache_bytes_per_token(size_from_config(model.config), "float32")
    assert bytes_per_decode_step(model, 100, 2) == weights + 200 * per_token


def test_int8_weights_are_counted_as_int8(tokenizer):
    context = BenchContext(tiny_model("pre-ln"), tokenizer, "tiny")
    quantized = METHODS["auto+int8-cpu"].prepare(context)
    assert bytes_per_decode_step(quantized, 0, 1) < 0.4 * bytes_per_decode_step(context.model, 0, 1)


@pytest.fixture(scope="module")
def tiny_loaded(tmp_path_factory):
    from tiny_models import save_tiny_model

    return load_model(str(save_tiny_model(tmp_path_factory.mktemp("bench"), "pre-ln", seed=6)))


@pytest.mark.parametrize("method", [m for m in METHODS if not METHODS[m].prepare])
def test_every_unquantized_method_measures_the_same_tokens(tiny_loaded, method):
    model, tokenizer, _ = tiny_loaded
    reference = measure(model, tokenizer, "hf", prompt_tokens=6, new_tokens=9, repeats=1)
    r = measure(model, tokenizer, method, prompt_tokens=6, new_tokens=9, repeats=2, bandwidth=1e10)
    assert r.token_ids == reference.token_ids and len(r.token_ids) == 9
    assert r.tokens_per_second == r.batch * r.new_tokens / r.total_seconds > 0
    assert 0 < r.time_to_first_token < r.total_seconds and len(r.runs_seconds) == 2
    assert r.peak_memory_bytes > 0 and r.weight_bytes > 0
    # a run of a loaded machine can end sooner than the runs' median first token: its decoding is not measurable
    per_run = [r.bytes_per_step * (r.new_tokens - 1) / (t - r.time_to_first_token) / 1e10 for t in r.runs_seconds
               if t > r.time_to_first_token]
    assert r.roofline_fraction == pytest.approx(statistics.median(per_run))
    assert r.bandwidths == [1e10, 1e10] and r.bandwidth_bytes_per_second == 1e10


def test_peak_memory_leaves_out_the_bandwidth_probe(tiny_loaded):
    """Measuring the bandwidth on a fresh buffer (quantized weights cannot be read as plain tensors)
    allocates two 512 MiB buffers before each run: the method's peak must not include them."""
    from helpers.environment import resident_memory_bytes
    from helpers.memory.measure import release_freed_memory

    model, tokenizer, _ = tiny_loaded
    release_freed_memory()
    before = resident_memory_bytes()
    r = measure(model, tokenizer, "cached", prompt_tokens=6, new_tokens=6, repeats=2, bandwidth="each")
    assert len(r.bandwidths) == 2 and all(b > 1e8 for b in r.bandwidths)
    assert r.peak_memory_bytes < before + (256 << 20)


@pytest.mark.parametrize("method", ["auto+int8-cpu", "auto+int8", "auto+nf4"])
def test_quantized_methods_report_their_quality(tiny_loaded, method):
    """bitsandbytes runs on the CPU too (slowly), so its path is exercised here as on a GPU."""
    model, tokenizer, info = tiny_loaded
    context = BenchContext(model, tokenizer, "tiny", source_folder=info.source)
    quantized = METHODS[method].prepare(context)
    assert quantized is not model
    r = measure(quantized, tokenizer, method, prompt_tokens=6, new_tokens=6, repeats=1, bandwidth=1e10)
    prompt = prompt_of_length(tokenizer, 6)
    reference = measure(model, tokenizer, "auto", prompt_tokens=6, new_tokens=6, repeats=1).token_ids
    q = quality_against(quantized, model, tokenizer, prompt, reference, r.token_ids)
    assert q.max_logit_error > 0 and 0 <= q.greedy_agreement <= 1 and q.reference_dtype == "float32"
    assert bytes_per_decode_step(quantized, 0, 1) < bytes_per_decode_step(model, 0, 1)


def test_default_methods_depend_on_the_device_and_keep_their_order():
    """The rows the benchmark's JSON, plots and README figures have always had, in their order: the
    tutorial's loop first (on a GPU it also takes the process's one-off start-up cost)."""
    shared = ["tutorial", "cached", "hf", "static", "auto"]
    ours_quantized = ["auto+int8-cpu", "auto+bf16-cpu", "auto+int8-weights-cpu"]
    assert default_methods("cpu") == [*shared, *ours_quantized, "ctranslate2", "ctranslate2+int8"]  # peers last
    assert default_methods("cuda") == [*shared, "auto+int8", "auto+nf4"]


def test_a_new_backend_gets_a_bench_row_before_auto():
    from helpers.analysis.bench_methods import method_rows
    from helpers.generation.backends.registry import BACKENDS

    extra = dataclasses.replace(BACKENDS["cached"], name="speculative", summary="a new backend")
    rows = method_rows({**BACKENDS, "speculative": extra})
    assert list(rows).index("static") < list(rows).index("speculative") < list(rows).index("auto")
    assert rows["speculative"].description == "a new backend" and "speculative" not in METHODS


def test_the_torch_free_row_list_is_the_measured_one():
    """`bench --help` lists bench_rows.ROWS without importing torch; it must be what bench_methods measures, the
    rows named by the registry's backends (a quantized row by its backend and plan)."""
    from helpers.analysis.bench_rows import ROWS
    from helpers.generation.backends.registry import BACKENDS, method_names

    assert {m.name: (m.description, m.devices) for m in METHODS.values()} == ROWS
    assert list(METHODS) == list(ROWS)
    for name in (n for n in ROWS if not METHODS[n].peer):  # a peer's row is named by the peer
        backend, _, plan_name = name.partition("+")
        assert backend in method_names()
        if backend in BACKENDS and backend != "hf" and not plan_name:  # hf is timed bare, without helpers
            assert ROWS[name][0] == BACKENDS[backend].summary


def test_old_row_names_are_still_taken_with_a_note(tiny_pre_folder, tmp_path, capsys):
    out = tmp_path / "old.json"
    code = main(["bench", "--model", str(tiny_pre_folder), "--new-tokens", "2", "--repeats", "1",
                 "--methods", "cached-loop,seed-loop", "--json", str(out)])
    assert code == 0
    assert [r["method"] for r in json.loads(out.read_text())["results"]] == ["cached", "tutorial"]
    err = capsys.readouterr().err
    assert "'cached-loop' is now called 'cached'" in err and "'seed-loop' is now called 'tutorial'" in err


def test_committed_results_read_under_the_backends_names():
    """The committed benchmarks/*.json were written under the old row names; read back, their rows and plots
    carry the current ones."""
    from helpers.analysis.bench_rows import OLD_NAMES, ROWS, with_current_names

    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu-opt-125m.json"
    raw = json.loads(committed.read_text())
    assert {r["method"] for r in raw["results"]} <= set(OLD_NAMES) | set(ROWS)
    report = Report.read(committed)
    assert [m.method for m in report.measurements] == [OLD_NAMES.get(r["method"], r["method"]) for r in raw["results"]]
    assert {m.method for m in report.measurements} <= set(ROWS) and report.settings["methods"][0] == "tutorial"
    assert [r["method"] for r in with_current_names(raw)["results"]] == [m.method for m in report.measurements]


def test_bench_command_writes_json_and_plot(tiny_pre_folder, tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", "--model", str(tiny_pre_folder), "--new-tokens", "5", "--repeats", "1", "--batch", "1,2",
                 "--methods", "cached,auto,auto+int8-cpu,auto+nf4", "--json", str(out), "--plot", str(png)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["schema"] == SCHEMA
    assert {"model", "parameters", "dtype", "device", "hardware", "bandwidth", "settings", "results"} <= set(data)
    assert {"cpu", "cpu_count", "ram_total_bytes", "torch", "transformers", "date"} <= set(data["hardware"])
    assert data["bandwidth"]["bytes_per_second"] > 0
    rows = {(r["method"], r["batch"]): r for r in data["results"]}
    assert set(rows) == {(m, b) for m in ("cached", "auto", "auto+int8-cpu", "auto+nf4") for b in (1, 2)}
    assert rows[("auto+nf4", 1)]["skipped"] == "runs on cuda, not cpu"
    assert rows[("auto+int8-cpu", 2)]["quality"]["greedy_agreement"] >= 0
    for r in data["results"]:
        if not r["skipped"]:
            assert r["tokens_per_second"] > 0 and r["roofline_fraction"] > 0 and r["new_tokens"] == 5
    assert png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "measured bandwidth" in printed and "roofline" in printed


def test_bench_rejects_bad_arguments(capsys):
    assert main(["bench", "--methods", "warp-drive"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["bench", "--batch", "1,x"]) == 2
    assert main(["bench", "--new-tokens", "0"]) == 2


def test_plot_from_committed_results():
    from pathlib import Path

    from helpers.analysis.plots import benchmark_figure

    for path in sorted((Path(__file__).parents[1] / "benchmarks").glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("schema") == SCHEMA:
            assert benchmark_figure(data).axes
    assert torch.get_num_threads() >= 1


def test_read_all_keeps_only_benchmark_reports(tmp_path):
    """notebook 07 reads benchmarks/, which also holds the playground's speed rows and other results."""
    committed = Path(__file__).resolve().parents[1] / "benchmarks"
    for path in committed.glob("*.json"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "playground-x.json").write_text(json.dumps({"schema": "playground-speed/1", "model": "x"}))
    found = Report.read_all(tmp_path)
    names = [path.name for path, _ in found]
    assert "playground-x.json" not in names and "cpu-opt-125m.json" in names
    assert all(isinstance(report, Report) and report.measurements for _, report in found)


def test_the_peak_measurement_sees_memory_freed_before_the_block_ends():
    from helpers.memory.measure import PeakMemory

    with PeakMemory("cpu") as peak:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert peak.added >= 60 * 2**20 and peak.bytes >= peak.baseline + peak.added
