"""`make gpu-check` on the CPU (`DRY=1`): the same script end to end with tiny shapes, its JSON's structure,
its figures real and consistent, bitsandbytes and the GPU plans recorded as unavailable with the reason; and
the run's machinery: a failing step does not stop the others, the budget and the hard limit hold, carried
wheels install offline."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from helpers.analysis.benchmark import SCHEMA as BENCH_SCHEMA
from helpers.analysis.benchmark import Report
from tools.gpu_check.__main__ import main as gpu_check_main
from tools.gpu_check.jobs import job_fit
from tools.gpu_check.profile import DRY_RUN, GPU, SCHEMA, STATUSES, Unavailable
from tools.gpu_check.run import Run
from tools.gpu_check.steps import Check
from tools.preflight import install_offline

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The dry run exactly as `make gpu-check DRY=1` starts it, in its own process."""
    out, scratch = tmp_path_factory.mktemp("gpu-check-out"), tmp_path_factory.mktemp("gpu-check-scratch")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--dry-run", "--wheels", ".gpu-wheels",
                           "--out", str(out), "--scratch", str(scratch)], cwd=REPO, capture_output=True, text=True,
                          timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "gpu-check.json").read_text())
    return out, scratch, summary, time.monotonic() - start


pytestmark = pytest.mark.slow


def test_dry_run_records_every_step_with_the_machine(dry_run):
    out, scratch, summary, seconds = dry_run
    assert summary["schema"] == SCHEMA and summary["dry_run"] and summary["profile"] == "dry-run"
    steps = summary["steps"]
    assert list(steps) == ["medium-folder", "medium-load-ram", "medium-fit", "medium-train-lora-int8", "large-fit",
                           "small-folder", *(f"small-{m}" for m in DRY_RUN.methods), "small-leaks",
                           "small-train-lora-fp32", "medium-sweep"]
    assert all(r["status"] in STATUSES for r in steps.values())
    assert {k for k, r in steps.items() if r["status"] != "ok"} == {"large-fit", "small-auto+int8", "small-auto+nf4",
                                                                    "medium-train-lora-int8"}
    assert 0 < summary["wall_seconds"] <= seconds and summary["wall_seconds"] < summary["budget_seconds"]
    assert {"cpu", "cpu_count", "ram_total_bytes", "torch", "transformers", "gpus", "date"} <= set(summary["hardware"])
    packages = summary["packages"]
    assert packages["packages"]["torch"] == torch.__version__ and packages["cuda"]["available"] is False
    assert {"transformers", "accelerate", "bitsandbytes"} <= set(packages["packages"])
    assert packages["requirements"] and all("ok" in row for row in packages["requirements"])
    assert list(scratch.iterdir()) == []  # the checkpoints it wrote are gone


def test_without_a_gpu_the_8_and_4_bit_steps_say_why(dry_run):
    steps = dry_run[2]["steps"]
    assert steps["large-fit"]["status"] == "unavailable" and "needs a CUDA GPU" in steps["large-fit"]["reason"]
    for name in ("small-auto+int8", "small-auto+nf4", "medium-train-lora-int8"):
        assert steps[name]["status"] == "unavailable" and steps[name]["reason"] == "runs on cuda, not cpu"


def test_every_method_is_measured_and_agrees_with_plain_generate(dry_run):
    steps = dry_run[2]["steps"]
    for name in ("auto", "hf", "static"):
        result = steps[f"small-{name}"]["result"]
        m = result["measurement"]
        assert m["method"] == name and m["new_tokens"] == DRY_RUN.new_tokens == len(m["token_ids"])
        assert m["tokens_per_second"] == pytest.approx(m["batch"] * m["new_tokens"] / m["total_seconds"])
        assert m["tokens_per_second"] > 0
        # medians of different runs: the median first token comes before the longest run's end, not the median's
        assert 0 < m["time_to_first_token"] < max(m["runs_seconds"]) and m["decode_tokens_per_second"] > 0
        assert m["peak_memory_bytes"] > 0 and m["roofline_fraction"] > 0 and m["bandwidth_bytes_per_second"] > 0
        assert m["first_call_seconds"] > 0 and m["first_call_new_tokens"] == min(DRY_RUN.new_tokens, 4)
        assert isinstance(m["first_call_extra_seconds"], float) and len(m["runs_seconds"]) == DRY_RUN.repeats
        assert result["bandwidth"]["bytes_per_second"] > 0
        assert result["token_agreement"] == {"reference": "hf", "agreement": 1.0, "first_difference": None,
                                             "identical": True}


def test_loading_ram_is_the_whole_process_peak_of_a_hub_layout_folder(dry_run):
    steps = dry_run[2]["steps"]
    files = {f["name"]: f["bytes"] for f in steps["medium-folder"]["result"]["files"]}
    shards = sorted(n for n in files if n.endswith(".safetensors"))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert "model.safetensors.index.json" in files and "config.json" in files
    r = steps["medium-load-ram"]["result"]
    assert r["plan"] == "fp32-cpu" and r["load_seconds"] > 0
    assert r["peak_resident_bytes"] >= r["resident_before_bytes"] > 0 and r["peak_sampled"]["RssAnon"] > 0
    assert r["peak_resident_bytes"] >= max(r["peak_sampled"]["VmRSS"], r["resident_after_bytes"])
    assert r["weight_bytes"] < sum(files[n] for n in shards) < 1.1 * r["weight_bytes"] + 65536
    assert r["fits_colab_ram"] is (r["peak_resident_bytes"] < r["colab_ram_bytes"])
    assert r["relative_error"] == pytest.approx((r["predicted_ram_bytes"] - r["peak_resident_bytes"])
                                                / r["peak_resident_bytes"])


def test_the_fit_check_compares_measured_and_predicted_peaks(dry_run):
    result = dry_run[2]["steps"]["medium-fit"]["result"]
    assert result["fits"] and result["fits_with"] == {"context": DRY_RUN.context, "generation_method": "auto"}
    (attempt,) = result["attempts"]
    assert attempt["context"] == DRY_RUN.context and attempt["new_tokens"] == DRY_RUN.fit_new_tokens
    assert attempt["predicted_bytes"] > 0 and attempt["measured_bytes"] > 0 and attempt["tokens_per_second"] > 0
    assert attempt["relative_error"] == pytest.approx(
        (attempt["predicted_bytes"] - attempt["measured_bytes"]) / attempt["measured_bytes"])
    assert attempt["method"] == result["option"]["method"] == "fp32-cpu"
    assert attempt["planner_peak_bytes"] == attempt["predicted_bytes"]  # one prediction: the planner's


def test_the_sweep_and_the_cycles_are_measured(dry_run):
    out, _, summary, _ = dry_run
    sweep = summary["steps"]["medium-sweep"]["result"]
    assert [r["batch"] for r in sweep["rows"]] == list(DRY_RUN.sweep_batches)
    for row in sweep["rows"]:
        assert row["tokens_per_second"] > 0 and row["peak_memory_bytes"] > 0 and row["planner_peak_bytes"] > 0
    report = Report.read(out / f"gpu-{DRY_RUN.medium.name}.json")
    assert report.as_dict()["schema"] == BENCH_SCHEMA and len(report.measurements) == len(DRY_RUN.sweep_batches)
    leaks = summary["steps"]["small-leaks"]["result"]
    assert leaks["cycles"] == 5 == len(leaks["resident_bytes_after_each"]) and leaks["faults_injected"] == 1
    assert leaks["cuda_allocated_bytes_after_each"] == [0] * 5 and leaks["cuda_left_after_last_bytes"] == 0
    assert min(leaks["resident_bytes_after_each"]) > 0 and len(set(leaks["threads_after_each"])) == 1


def test_lora_training_is_measured_against_the_training_planner(dry_run):
    """On the CPU the dry run trains the small model with lora-fp32 (the GPU run: OPT-1.3B lora-fp16 and 6.7B
    lora-int8 under 15 GiB); its peak is recorded against training_peak_bytes (the 10% bar is
    tests/test_training_plan.py's, in a warmed-up process: this one's growth includes peft's first imports)."""
    from helpers.memory.training_plan import training_peak_bytes
    from helpers.opt.sizes import OPTSize

    r = dry_run[2]["steps"]["small-train-lora-fp32"]["result"]
    assert r["fits"] and r["steps"] == DRY_RUN.train_steps == len(r["losses"]) and r["optimizer"] == "adamw"
    assert (r["seq_len"], r["batch"], r["rank"]) == (DRY_RUN.train_seq_len, DRY_RUN.train_batch, 16)
    assert r["tokens_per_second"] == pytest.approx(r["steps_per_second"] * r["seq_len"] * r["batch"])
    assert r["trainable_parameters"] == DRY_RUN.small.layers * 2 * 16 * 2 * DRY_RUN.small.d_model
    size = OPTSize("custom", *(getattr(DRY_RUN.small, k) for k in ("layers", "heads", "d_model", "ffn",
                                                                    "word_embed_proj_dim", "pre_layer_norm")))
    expected = training_peak_bytes(size, "lora-fp32", seq_len=r["seq_len"], batch_size=r["batch"], rank=16)
    assert r["planner_breakdown"] == expected and r["predicted_bytes"] == expected["total"] - expected["overhead"]
    assert r["measured_bytes"] > 0 and r["relative_error"] == pytest.approx(
        (r["predicted_bytes"] - r["measured_bytes"]) / r["measured_bytes"])


def test_the_reports_and_figures_are_written(dry_run):
    out, _, summary, _ = dry_run
    small = Report.read(out / f"gpu-{DRY_RUN.small.name}.json")
    assert [m.method for m in small.measurements] == list(DRY_RUN.methods)
    assert [m.method for m in small.measurements if m.skipped] == ["auto+int8", "auto+nf4"]
    assert summary["figures"] == {"small": f"gpu-{DRY_RUN.small.name}.png", "medium": f"gpu-{DRY_RUN.medium.name}.png",
                                  "fits": "gpu-check-fits.png"}
    for name in summary["figures"].values():
        assert (out / name).stat().st_size > 10_000
    log = (out / "gpu-check.log").read_text()
    assert "medium-fit: ok" in log and "loading with plan fp32-cpu" in log  # the children's lines too


# ------------------------------------------------------------------------------------------ the machinery


def _run(tmp_path, budget: float = 60, grace: float = 60, estimates: dict | None = None) -> Run:
    profile = dataclasses.replace(DRY_RUN, grace_seconds=grace, estimates=estimates or {})
    return Run(profile, tmp_path / "out", tmp_path, None, budget)


def test_a_failing_step_is_recorded_and_the_next_one_runs(tmp_path):
    run = _run(tmp_path)

    def unavailable():
        raise Unavailable("needs a unicorn")

    assert run.step("boom", lambda: 1 / 0)["status"] == "failed"
    assert run.step("after", lambda: {"x": 1})["result"] == {"x": 1}
    assert run.step("needs-boom", lambda: {"x": 2}, requires=("boom",))["reason"] == "needs boom, which did not succeed"
    assert run.step("unicorn", unavailable)["reason"] == "needs a unicorn"
    written = json.loads((tmp_path / "out" / "gpu-check.json").read_text())["steps"]
    assert written["boom"]["error"]["type"] == "ZeroDivisionError" and "1 / 0" in written["boom"]["error"]["traceback"]
    assert [r["status"] for r in written.values()] == ["failed", "ok", "skipped", "unavailable"]


def test_a_failing_child_process_is_recorded_with_its_error(tmp_path):
    run = _run(tmp_path)
    record = run.step("load", lambda: run.child("load-ram", folder=str(tmp_path / "nowhere"), method="fp32-cpu",
                                                gpu_memory=None))
    assert record["status"] == "failed" and record["error"]["type"] == "ChildFailed"
    assert "ModelLoadError" in record["error"]["message"] and "does not exist" in record["error"]["message"]


def test_the_budget_and_the_hard_limit_hold(tmp_path):
    run = _run(tmp_path, budget=0.5, grace=0.5, estimates={"big": 10.0})
    run.arm()
    try:
        assert "time budget" in run.step("big", lambda: {})["reason"]
        stopped = run.step("sleeper", lambda: time.sleep(10))
        assert stopped["status"] == "failed" and stopped["error"]["type"] == "OutOfTime" and stopped["seconds"] < 5
        assert "time budget" in run.step("later", lambda: {})["reason"]
    finally:
        run.disarm()


def test_a_zero_budget_skips_every_step_but_writes_the_results(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # main sets these for its run
    monkeypatch.setenv("GPU_CHECK_STARTED", str(time.time()))
    assert gpu_check_main(["--dry-run", "--budget", "0", "--out", str(tmp_path / "out"), "--scratch", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert summary["packages"]["packages"]["torch"] and len(summary["steps"]) == 14
    assert all(r["status"] == "skipped" for r in summary["steps"].values())
    assert "time budget" in summary["steps"]["medium-folder"]["reason"]
    assert "needs small-folder" in summary["steps"]["small-auto"]["reason"]
    assert (tmp_path / "out" / "gpu-check-fits.png").is_file()


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel, as pip builds them."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"__version__ = {version!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w") as archive:
        for file, text in files.items():
            archive.writestr(file, text)
        archive.writestr(f"{info}/RECORD", "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n")
    return path


def test_a_carried_wheel_installs_offline_and_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "gpucheckprobe", "1.2.3")
    record = install_offline("gpucheckprobe", wheels, tmp_path / "site")
    assert record["installed"] == "1.2.3" and record["imports"] is True and "error" not in record
    assert "--no-index" in record["command"] and (tmp_path / "site" / "gpucheckprobe" / "__init__.py").is_file()


def test_a_missing_wheel_says_how_to_get_it(tmp_path):
    record = install_offline("bitsandbytes", tmp_path / "empty", tmp_path / "site")
    assert "make gpu-wheels" in record["error"] and record["wheels"] == []


def test_running_out_of_memory_is_a_result_not_a_failure(monkeypatch):
    """On a GPU, out of memory (torch's own error, or a compiler's error wrapping it) means "does not fit"."""
    import tools.plan_check

    for error in (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                  RuntimeError("BackendCompilerFailed: ... CUDA out of memory ...")):
        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(tools.plan_check, "check_plan", fail)
        result = job_fit("folder", "fp16", 15 << 30, 2048, 256, "auto")
        assert result["fits"] is False and "out of memory" in result["error"] and result["context"] == 2048
    monkeypatch.setattr(tools.plan_check, "check_plan", lambda *a, **k: (_ for _ in ()).throw(ValueError("other")))
    with pytest.raises(ValueError):
        job_fit("folder", "fp16", 15 << 30, 2048, 256, "auto")


def test_a_fit_that_runs_out_of_memory_is_tried_uncompiled_then_shorter(tmp_path, monkeypatch):
    """The GPU profile's attempts: generate()'s default (compiled) first; out of memory, the eager cached
    loop at the same context; for the 8-bit model (never compiled), a shorter context instead."""
    check = Check(Run(GPU, tmp_path / "out", tmp_path, None, 60))
    check.folders = {"medium": tmp_path, "large": tmp_path}
    monkeypatch.setattr(check, "_option", lambda *a, **k: type("Option", (), {"as_dict": lambda self: {}})())
    monkeypatch.setattr(check, "_predicted", lambda *a, **k: {"planner_peak_bytes": 1, "planner_fits": True})
    asked = []

    def child(job, **args):
        asked.append((args["context"], args["generation_method"]))
        return {"fits": len(asked) > 1, "context": args["context"], "generation_method": args["generation_method"]}

    monkeypatch.setattr(check.run, "child", child)
    result = check.fit("medium", "fp16", 256, (2048,))
    assert asked == [(2048, "auto"), (2048, "cached")] and result["fits"] is False
    assert result["fits_with"] == {"context": 2048, "generation_method": "cached"}
    asked.clear()
    result = check.fit("large", "int8", 64, (2048, 1024))
    assert asked == [(2048, "auto"), (1024, "auto")] and result["fits_with"]["context"] == 1024


def test_training_that_runs_out_of_memory_is_a_result(monkeypatch, tmp_path):
    """The training step's out of memory (on a GPU, under the 15 GiB cap) says "does not fit", with the peak."""
    import tools.gpu_check.training as training

    def fail(*args):
        raise MemoryError("out of memory while loading")

    monkeypatch.setattr(training, "_load", fail)
    result = training.job_train(str(tmp_path), "lora-fp32", None, 32, 2, 16, 3)
    assert result["fits"] is False and "MemoryError" in result["error"] and result["steps_done"] == 0
    if not torch.cuda.is_available():
        with pytest.raises(Unavailable, match="runs on cuda, not cpu"):
            training.job_train(str(tmp_path), "lora-int8", None, 32, 2, 16, 3)
