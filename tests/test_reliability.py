"""The second reliability round (issue 16): concurrent generations on one model, use after unload, damaged
weights, results checked before work starts, out-of-memory refused up front, SIGTERM, terminal faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from tiny_models import tiny_model

from helpers.errors import ModelUnloadedError
from helpers.generation.run import generate
from helpers.generation.settings import GenerationSettings
from helpers.generation.streaming import stream
from helpers.loading.model import unload

GREEDY = GenerationSettings.greedy(max_new_tokens=24, min_new_tokens=24)
PROMPTS = ["Natural language processing is", "Hi", "The weather today", "Once upon a time there"]


# ------------------------------------------------------------------------------ concurrent generations


@pytest.mark.parametrize("method", ["cpu-fast", "cached", "hf"])
def test_two_streams_interleaved_on_one_model_give_their_isolated_tokens(tokenizer, method):
    model = tiny_model("pre-ln", seed=11)
    alone = [generate(model, tokenizer, p, GREEDY, method=method).token_ids for p in PROMPTS[:2]]
    a, b = (stream(model, tokenizer, p, GREEDY, method=method) for p in PROMPTS[:2])
    ia, ib = iter(a), iter(b)
    for _ in range(200):  # a piece of one, then a piece of the other, until both end
        done = [next(it, None) is None for it in (ia, ib)]
        if all(done):
            break
    assert [a.result.token_ids, b.result.token_ids] == alone
    assert torch.get_num_threads() >= 1 and a.result.finish_reason == b.result.finish_reason == "length"


def test_interleaved_engine_streams_restore_torch_threads(tokenizer):
    model = tiny_model("pre-ln", seed=11)
    before = torch.get_num_threads()
    a, b = (iter(stream(model, tokenizer, p, GREEDY, method="cpu-fast")) for p in PROMPTS[:2])
    next(a), next(b)
    a.close()  # left in the other order than entered
    b.close()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("settings", [GREEDY, GenerationSettings(max_new_tokens=24, seed=3)], ids=["greedy", "seeded"])
def test_four_threads_on_one_model_give_exactly_the_isolated_tokens(tokenizer, settings):
    model = tiny_model("post-ln", seed=12)
    alone = {p: generate(model, tokenizer, p, settings).token_ids for p in PROMPTS}
    got: dict[str, list[list[int]]] = {p: [] for p in PROMPTS}
    errors: list[BaseException] = []

    def work(prompt: str) -> None:
        try:
            for _ in range(3):
                got[prompt].append(generate(model, tokenizer, prompt, settings).token_ids)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert got == {p: [alone[p]] * 3 for p in PROMPTS}


def test_seeded_sampling_through_model_generate_is_reproducible_under_threads(tokenizer):
    """model.generate samples from torch's one global generator: runs take turns, so the seed decides."""
    model = tiny_model("pre-ln", seed=13)
    settings = GenerationSettings(max_new_tokens=16, seed=7)
    alone = generate(model, tokenizer, "Hello", settings, method="hf").token_ids
    got: list[list[int]] = []
    threads = [threading.Thread(target=lambda: got.append(
        generate(model, tokenizer, "Hello", settings, method="hf").token_ids)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert got == [alone] * 4


# ------------------------------------------------------------------------------ after unload


def test_calling_an_unloaded_model_says_so(tokenizer):
    model = tiny_model("pre-ln")
    ids = torch.tensor([[2, 100, 200]])
    unload(model)
    with pytest.raises(ModelUnloadedError, match="unloaded"):
        model(ids)
    with pytest.raises(ModelUnloadedError, match="unloaded"):
        model.generate(ids, max_new_tokens=2)
    with pytest.raises(ModelUnloadedError, match="unloaded"):
        generate(model, tokenizer, "Hi", GREEDY)


@pytest.mark.parametrize("method", ["cpu-fast", "cached", "hf"])
def test_unloading_during_a_stream_stops_it_with_that_message(tokenizer, method):
    model = tiny_model("pre-ln", seed=14)
    s = stream(model, tokenizer, "Hello", GenerationSettings.greedy(max_new_tokens=400, min_new_tokens=400),
               method=method)
    pieces = []
    with pytest.raises(ModelUnloadedError, match="unloaded while this generation was running"):
        for piece in s:
            pieces.append(piece)
            if len(pieces) == 2:
                unload(model)
    assert len(s.result.token_ids) < 400
    assert not [t for t in threading.enumerate() if t.name == "helpers-generate"]


def test_unloading_from_another_thread_stops_an_engine_stream(tokenizer):
    model = tiny_model("pre-ln", seed=15)
    s = stream(model, tokenizer, "Hello", GenerationSettings.greedy(max_new_tokens=2000, min_new_tokens=2000),
               method="cpu-fast")
    started = threading.Event()

    def consume() -> None:
        try:
            for _ in s:
                started.set()
        except ModelUnloadedError as exc:
            outcome.append(exc)

    outcome: list[BaseException] = []
    worker = threading.Thread(target=consume)
    worker.start()
    assert started.wait(60)
    unload(model)
    worker.join(timeout=60)
    assert not worker.is_alive() and len(outcome) == 1


# ------------------------------------------------------------------------------ messages, as early as known


@pytest.fixture
def no_loading(monkeypatch):
    """Loading fails the test: the message must come before any weight is read."""
    import helpers.loading.model

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(helpers.loading.model, "load_model", refuse)


MESSAGE_CASES = [
    (["generate", "--device", "banana", "hi"], 1, r"Unknown device 'banana'. Use 'auto', 'cpu', 'cuda'"),
    (["generate", "--logprobs", "100", "--json", "hi"], 1, r"--logprobs must be a whole number from 0 to 20"),
    (["generate", "--cpu-memory", "lots", "hi"], 2, r"'lots' is not a memory size: write it like 15GiB"),
    (["plan", "--gpu-memory", "1..2GiB"], 2, r"'1..2GiB' is not a memory size"),
    (["plan", "--gpu-memory", "lots"], 2, r"'lots' is not a memory size"),
    (["plan", "--gpus", "-3", "--gpu-memory", "15GiB"], 2, r"--gpus: The number of GPUs must be 0 or more, not -3"),
]


@pytest.mark.parametrize("args, code, message", MESSAGE_CASES, ids=[" ".join(c[0][:3]) for c in MESSAGE_CASES])
def test_bad_flags_are_refused_before_loading_with_what_to_do(tiny_pre_folder, no_loading, capsys, args, code,
                                                              message):
    import re

    from helpers.cli.main import main

    assert main([args[0], "--model", str(tiny_pre_folder), *args[1:]]) == code
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err and "damaged" not in err


def test_a_weights_file_given_as_the_model_names_its_folder(tiny_pre_folder, no_loading, capsys):
    from helpers.cli.main import main

    assert main(["generate", "--model", str(tiny_pre_folder / "model.safetensors"), "hi"]) == 1
    err = capsys.readouterr().err
    assert "is a file" in err and f"{tiny_pre_folder}." in err and "does not exist" not in err


def test_device_names_are_checked_in_python_too():
    from helpers.errors import ModelLoadError
    from helpers.loading.model import load_model

    for device in ("banana", "cuda:x", "", 3):
        with pytest.raises(ModelLoadError, match="device"):
            load_model("opt-125m", device=device, dtype="float32")


@pytest.mark.parametrize("prompt", [None, 5, b"bytes", [None], ["a", 3]], ids=repr)
def test_complete_says_what_a_prompt_must_be(tiny, tokenizer, prompt):
    from helpers.errors import PromptError
    from helpers.generation.completions import complete

    with pytest.raises(PromptError, match="prompt must be a string or a list of strings, got"):
        complete(tiny, tokenizer, prompt)


# ------------------------------------------------------------------------------ the planner's disk offload


def _offload_folders() -> set[str]:
    import glob
    import tempfile

    return set(glob.glob(f"{tempfile.gettempdir()}/opt-offload-*"))


def _budget_that_only_disk_offload_fits(folder) -> int:
    from helpers.loading.sources import size_of
    from helpers.memory.planner import CPU_PROCESS_BYTES, Budget, plan

    need = {o.method: o.cpu_bytes for o in plan(size_of(str(folder)), Budget(cpu_bytes=CPU_PROCESS_BYTES))}
    assert need["disk-offload"] < min(need["fp32-cpu"], need["int8-cpu"])
    return (need["disk-offload"] + min(need["fp32-cpu"], need["int8-cpu"])) // 2


def test_the_planners_disk_offload_choice_generates_and_leaves_no_folder(tiny_pre_folder, tokenizer):
    import gc

    from helpers.loading.model import load_model

    before = _offload_folders()
    budget = _budget_that_only_disk_offload_fits(tiny_pre_folder)
    reference = load_model(str(tiny_pre_folder), device="cpu", dtype="float32")
    offloaded = load_model(str(tiny_pre_folder), cpu_memory=budget)
    assert offloaded.info.plan.method == "disk-offload" and "disk" in offloaded.info.device
    assert offloaded.info.parameters == reference.info.parameters  # offloaded tensors are counted too
    for settings in (GREEDY, GenerationSettings(max_new_tokens=12, seed=4)):
        assert offloaded.generate("Hello", settings).token_ids == reference.generate("Hello", settings).token_ids
    assert "".join(offloaded.stream("Hello", GREEDY)) == reference.generate("Hello", GREEDY).text
    assert len(_offload_folders() - before) == 1
    offloaded.unload()
    assert _offload_folders() == before
    dropped = load_model(str(tiny_pre_folder), cpu_memory=budget)  # never unloaded: freed, or at exit
    assert len(_offload_folders() - before) == 1
    del dropped
    gc.collect()
    assert _offload_folders() == before


def test_a_refused_disk_offload_load_leaves_no_folder(tmp_path):
    import json

    from tiny_models import save_tiny_model

    from helpers.errors import ModelLoadError
    from helpers.loading.model import load_model

    folder = save_tiny_model(tmp_path / "m", "pre-ln")
    budget = _budget_that_only_disk_offload_fits(folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 3  # damaged: refused after the weights were offloaded
    (folder / "config.json").write_text(json.dumps(config))
    before = _offload_folders()
    with pytest.raises(ModelLoadError, match="damaged"):
        load_model(str(folder), cpu_memory=budget)
    assert _offload_folders() == before


# ------------------------------------------------------------------------------ where results go, checked first


@pytest.fixture
def no_work(monkeypatch):
    """The benchmark, leak and plan checks fail the test: the output must be refused before they start."""
    import helpers.analysis.benchmark
    import tools.leaks
    import tools.plan_check

    def refuse(*args, **kwargs):
        raise AssertionError("the work started before its output path was checked")

    for module, name in ((helpers.analysis.benchmark, "run_suite"), (tools.leaks, "leak_check"),
                         (tools.plan_check, "check_plan")):
        monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize("command, flag, name, message", [
    (["bench"], "--json", "", r"--json .* is a folder; give a file name in it"),
    (["bench"], "--plot", "", r"--plot .* is a folder"),
    (["bench"], "--plot", "x.xyz", r"matplotlib cannot draw '.xyz'; end the name with one of .*\.png"),
    (["bench"], "--plot", "x", r"matplotlib cannot draw 'no extension'"),
    (["leaks", "--model", "opt-125m"], "--out", "", r"--out .* is a folder"),
    (["plan", "--model", "opt-125m", "--check"], "--out", "", r"--out .* is a folder"),
    (["bench"], "--json", "/proc/no/such.json", r"cannot be written: /proc is not a folder this user may write to"),
])
def test_results_that_could_not_be_written_are_refused_before_the_work(tmp_path, no_work, capsys, command, flag,
                                                                       name, message):
    import re

    from helpers.cli.main import main

    target = name if name.startswith("/") else str(tmp_path / name) if name else str(tmp_path)
    assert main([*command, flag, target]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_results_go_into_new_folders(tmp_path, monkeypatch, capsys):
    import tools.leaks
    from helpers.cli.main import main

    monkeypatch.setattr(tools.leaks, "leak_check", lambda *a, **k: {
        "model": "m", "cuda_allocated_bytes_after_each": [0], "resident_growth_bytes": 0,
        "resident_growth_after_first_bytes": 0, "threads_after_each": [1, 1], "faults_injected": 0})
    out = tmp_path / "new" / "deeper" / "leaks.json"
    assert main(["leaks", "--model", "opt-125m", "--cycles", "2", "--out", str(out)]) == 0
    assert out.is_file()


# ------------------------------------------------------------------------------ the command line as a process


def _cli(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "helpers", *args], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, **popen)


@pytest.mark.parametrize("delay", [0.2, 0.6, 1.2, 2.5])
def test_ctrl_c_in_the_first_seconds_of_generate_prints_one_line(tiny_pre_folder, delay):
    proc = _cli("generate", "--model", str(tiny_pre_folder), "--max-new-tokens", "2000", "--min-new-tokens", "2000",
                "Hello", stdout=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert "Traceback" not in err, err
    if delay < 0.5 and proc.returncode == -signal.SIGINT:  # before Python's own handler exists: no output at all
        return
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", (proc.returncode, err)


def test_a_ctrl_c_during_imports_is_held_until_they_end():
    from helpers.signals import interrupt_after

    before = signal.getsignal(signal.SIGINT)
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupt_after():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        reached.append(True)  # the block ran to its end
    assert reached and signal.getsignal(signal.SIGINT) is before


def test_an_interrupt_dropped_inside_a_finalizer_is_delivered_again():
    from helpers.signals import interrupts_never_dropped

    class Finalized:
        def __del__(self):
            raise KeyboardInterrupt  # as a Ctrl-C landing while the garbage collector runs it would

    class Failing:
        def __del__(self):
            raise ValueError("an ordinary error in a finalizer")

    seen = []
    before = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        with interrupts_never_dropped():
            Failing()  # not an interrupt: passed on to the hook that was there
            with pytest.raises(KeyboardInterrupt):
                Finalized()  # dropped at once: Python would print the interrupt and go on
                time.sleep(5)
    finally:
        sys.unraisablehook = before
    assert [type(u.exc_value) for u in seen] == [ValueError]


def test_sigterm_during_plan_check_removes_its_temporary_folder(tmp_path):
    proc = _cli("plan", "--model", "opt-125m", "--check", "--new-tokens", "2000", stdout=subprocess.DEVNULL,
                env={"TMPDIR": str(tmp_path)})
    deadline = time.monotonic() + 180
    while not list(tmp_path.glob("opt-plan-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert list(tmp_path.glob("opt-plan-*")), "the check never made its folder"
    time.sleep(1.0)  # inside the work: writing the weights or loading them
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("opt-plan-*"))


def test_sigterm_is_an_interrupt_only_inside_and_in_the_main_thread():
    from helpers.signals import Terminated, sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as caught, sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert isinstance(caught.value, Terminated) and signal.getsignal(signal.SIGTERM) is before
    elsewhere: list = []
    worker = threading.Thread(target=lambda: elsewhere.append(sigterm_as_interrupt().__enter__()))
    worker.start()
    worker.join()
    assert signal.getsignal(signal.SIGTERM) is before  # a worker thread cannot install it, and did not try


def test_an_ascii_terminal_gets_escapes_and_exact_json(tiny_pre_folder):
    prompt = "Ünïcödé 😀"
    env = {"PYTHONIOENCODING": "ascii"}
    streamed = _cli("generate", "--model", str(tiny_pre_folder), "--greedy", "--max-new-tokens", "40", prompt,
                    stdout=subprocess.PIPE, env=env)
    out, err = streamed.communicate(timeout=120)
    assert streamed.returncode == 0 and "UnicodeEncodeError" not in err, err
    assert out.startswith("\\xdcn\\xefc\\xf6d\\xe9 \\U0001f600") and "backslash escapes" in err
    as_json = _cli("generate", "--model", str(tiny_pre_folder), "--greedy", "--max-new-tokens", "40", "--json",
                   prompt, stdout=subprocess.PIPE, env=env)
    out, err = as_json.communicate(timeout=120)
    assert as_json.returncode == 0, err
    assert json.loads(out)["prompt"] == prompt and out.isascii()


def test_a_closed_standard_output_is_refused_with_a_message(tiny_pre_folder):
    proc = subprocess.run(f'"{sys.executable}" -m helpers generate --model "{tiny_pre_folder}" hi >&-', shell=True,
                          capture_output=False, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 1 and "standard output is closed" in proc.stderr
    assert "AttributeError" not in proc.stderr


# ------------------------------------------------------------------------------ out of memory, refused up front


def test_a_beam_search_that_cannot_fit_is_refused_before_it_starts(tiny, tokenizer, monkeypatch):
    from helpers.errors import MemoryBudgetError

    with pytest.raises(MemoryBudgetError, match=r"1 prompt\(s\) x 100000 beams.* Use fewer beams"):
        generate(tiny, tokenizer, "Hi", GenerationSettings.greedy(max_new_tokens=20, num_beams=100000))
    monkeypatch.setattr("helpers.environment.psutil.virtual_memory", lambda: type("M", (), {"available": 2**20})())
    with pytest.raises(MemoryBudgetError, match="more than the 1.0 MiB free on cpu"):
        generate(tiny, tokenizer, ["Hi"] * 8, GenerationSettings.greedy(max_new_tokens=200))
    monkeypatch.undo()
    assert generate(tiny, tokenizer, "Hi", GenerationSettings.greedy(max_new_tokens=4, num_beams=4)).token_ids


def test_num_beams_100000_on_the_command_line_is_one_line(tiny_pre_folder, capsys):
    from helpers.cli.main import main

    assert main(["generate", "--model", str(tiny_pre_folder), "--num-beams", "100000", "hi"]) == 1
    err = capsys.readouterr().err
    assert "would need about" in err and "Use fewer beams" in err and "Traceback" not in err


@pytest.fixture
def no_random_weights(monkeypatch):
    import sys

    import helpers.analysis.bench_methods  # noqa: F401  (the modules that make random weights)
    import helpers.opt.random_weights
    import tools.leaks  # noqa: F401
    import tools.plan_check  # noqa: F401

    def refuse(*args, **kwargs):
        raise AssertionError("random weights were made before the memory check")

    original = helpers.opt.random_weights.random_model
    users = [m for name, m in list(sys.modules.items())
             if name.startswith(("helpers", "tools")) and getattr(m, "random_model", None) is original]
    assert helpers.opt.random_weights in users and len(users) > 1  # where it is defined, and where it is used
    for module in users:
        monkeypatch.setattr(module, "random_model", refuse)


def test_bench_of_a_size_that_does_not_fit_is_refused_before_the_weights_are_made(no_random_weights, monkeypatch,
                                                                                   capsys):
    from helpers.cli.main import main
    from helpers.memory.planner import Budget

    six_gib = Budget(cpu_bytes=6 * 2**30)
    monkeypatch.setattr(Budget, "of_machine", classmethod(lambda cls, *a, **k: six_gib))
    assert main(["bench", "--model", "opt-2.7b", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "Benchmarking opt-2.7b (float32 on cpu) would not fit in memory" in err
    assert "GiB of RAM" in err and "python -m helpers plan --model opt-2.7b" in err


def test_a_load_on_a_named_device_that_cannot_fit_is_refused_before_loading(tiny_pre_folder, monkeypatch):
    from helpers.errors import MemoryBudgetError
    from helpers.loading.model import load_model
    from helpers.memory.planner import CPU_PROCESS_BYTES

    with pytest.raises(MemoryBudgetError, match=r"Loading .* in float32 on cpu would not fit in memory: .* needs about"):
        load_model(str(tiny_pre_folder), device="cpu", dtype="float32", cpu_memory=CPU_PROCESS_BYTES)
    assert load_model(str(tiny_pre_folder), device="cpu", dtype="float32").generate("Hi", GREEDY).token_ids
