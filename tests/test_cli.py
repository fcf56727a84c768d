"""`python -m helpers generate`: streaming, --json fields, and errors without tracebacks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli.main import main
from helpers.generation.run import generate
from helpers.generation.settings import GenerationSettings
from helpers.loading.model import load_model

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, stdin=None):
    proc = subprocess.run([sys.executable, "-m", "helpers", *args], capture_output=True, text=True, timeout=300,
                          input=stdin)
    return proc.returncode, proc.stdout, proc.stderr


def test_json_output_has_the_contract_fields_and_matches_the_library(tiny_folder):
    code, out, err = run_cli("generate", "--model", str(tiny_folder), "--greedy", "--max-new-tokens", "12",
                             "--json", "Natural language processing is a subfield of")
    assert code == 0, err
    data = json.loads(out)
    assert {"text", "prompt_token_ids", "token_ids", "tokens_per_second"} <= set(data)
    assert data["prompt_token_ids"][0] == 2 and len(data["token_ids"]) <= 12 and data["tokens_per_second"] > 0
    model, tokenizer, _ = load_model(str(tiny_folder))
    expected = generate(model, tokenizer, "Natural language processing is a subfield of",
                        GenerationSettings.greedy(max_new_tokens=12))
    assert data["token_ids"] == expected.token_ids and data["text"] == expected.text
    assert "Traceback" not in err


def test_streams_prompt_and_continuation_to_the_terminal(tiny_pre_folder, capsys):
    code = main(["generate", "--model", str(tiny_pre_folder), "--max-new-tokens", "8", "--seed", "5",
                 "--temperature", "0.9", "--top-p", "0.9", "--top-k", "50", "Hello there"])
    out, err = capsys.readouterr()
    assert code == 0
    model, tokenizer, _ = load_model(str(tiny_pre_folder))
    expected = generate(model, tokenizer, "Hello there", GenerationSettings(
        max_new_tokens=8, seed=5, temperature=0.9, top_p=0.9, top_k=50))
    assert out == "Hello there" + expected.text + "\n"
    assert "tokens/s" in err and "seed 5" in err


def test_prompt_from_standard_input(tiny_pre_folder):
    code, out, err = run_cli("generate", "--model", str(tiny_pre_folder), "--greedy", "--max-new-tokens", "3",
                             "--json", "-", stdin="Hello from a pipe")
    assert code == 0, err
    assert json.loads(out)["prompt"] == "Hello from a pipe"


@pytest.mark.parametrize("args, message", [
    (["--model", "no-such-model", "x"], "is not a model this can load"),
    (["--model", "./missing/folder", "x"], "does not exist"),
    (["--model", "opt-125m", "x"], "HF_HUB_OFFLINE"),
    (["--model", "{tiny}", "--temperature", "0", "x"], "temperature must be a number above 0"),
    (["--model", "{tiny}", "--top-p", "3", "x"], "top_p must be above 0"),
    (["--model", "{tiny}", "--max-new-tokens", "0", "x"], "max_new_tokens"),
    (["--model", "{tiny}", "--greedy", "--max-new-tokens", "4", "hello " * 2100], "2048 positions"),
    (["--model", "{tiny}", "--device", "cuda:0", "x"], "no CUDA GPU"),
])
def test_errors_exit_non_zero_with_a_message_and_no_traceback(tiny_pre_folder, capsys, args, message):
    import torch

    if "cuda:0" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = [a.replace("{tiny}", str(tiny_pre_folder)) for a in args]
    code = main(["generate", *args])
    _, err = capsys.readouterr()
    assert code == 1 and message in err and "Traceback" not in err


def test_greedy_with_sampling_flags_is_a_usage_error(tiny_pre_folder, capsys):
    code = main(["generate", "--model", str(tiny_pre_folder), "--greedy", "--temperature", "0.5", "x"])
    assert code == 2 and "cannot be combined with --temperature" in capsys.readouterr().err


def test_method_takes_every_backend_of_the_registry_and_refuses_others_before_loading(tiny_pre_folder, capsys):
    from helpers.generation.backends.registry import ALIASES, method_names

    model, tokenizer, _ = load_model(str(tiny_pre_folder))
    for method in (*method_names(), *ALIASES):
        code = main(["generate", "--model", str(tiny_pre_folder), "--greedy", "--max-new-tokens", "4", "--json",
                     "--method", method, "Hello"])
        out, err = capsys.readouterr()
        assert code == 0, err
        expected = generate(model, tokenizer, "Hello", GenerationSettings.greedy(max_new_tokens=4), method=method)
        assert json.loads(out)["token_ids"] == expected.token_ids
    code = main(["generate", "--model", "./no/such/folder", "--method", "warp-drive", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "Unknown method 'warp-drive'" in err and "cpu-fast" in err and "Loading" not in err


def test_argparse_errors_exit_2():
    code, _, err = run_cli("generate", "x")
    assert code == 2 and "--model" in err and "Traceback" not in err


def test_an_unexpected_failure_is_one_line(monkeypatch, tiny_pre_folder, capsys):
    import helpers.generation.streaming as generation

    def broken(*args, **kwargs):
        raise RuntimeError("something deep inside a library")

    monkeypatch.setattr(generation, "stream", broken)
    code = main(["generate", "--model", str(tiny_pre_folder), "x"])
    err = capsys.readouterr().err
    assert code == 1 and "RuntimeError: something deep inside a library" in err and "Traceback" not in err


# Runs `python -m helpers ARGS` as `python -m` would, then reports which of torch and transformers got imported.
HELP_WRAPPER = """
import runpy, sys
try:
    runpy.run_module("helpers", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
print("IMPORTED", sorted(m for m in ("torch", "transformers") if m in sys.modules), code)
"""


def _subcommands() -> list[str]:
    from helpers.cli.main import build_parser

    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    return list(sub.choices)


@pytest.mark.parametrize("argv", [[], *([name] for name in _subcommands())], ids=lambda argv: " ".join(argv) or "-")
def test_every_help_answers_without_importing_torch_or_transformers(argv):
    """`python -m helpers --help` took about 4 s: the bench parser imported torch to list its rows."""
    done = subprocess.run([sys.executable, "-c", HELP_WRAPPER, *argv, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: python -m helpers" in done.stdout
    assert done.stdout.rstrip().endswith("IMPORTED [] 0"), done.stdout[-300:]


def test_the_measuring_runs_are_found_beside_the_package_or_named_as_missing(tmp_path):
    """plan --check and leaks run the project's tools/ (not in the wheel): found from the checkout whatever the
    working folder, and from an installed copy of helpers alone, one line saying where to get them."""
    import shutil

    probe = "from helpers.cli.project_tools import project_tool; print(project_tool('leaks', 'leaks').__file__)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and Path(done.stdout.strip()) == REPO / "tools" / "leaks.py", done.stderr
    installed = tmp_path / "site-packages"
    shutil.copytree(REPO / "helpers", installed / "helpers", ignore=shutil.ignore_patterns("__pycache__", "data"))
    for argv in (["leaks", "--model", "opt-125m"], ["plan", "--model", "opt-125m", "--check"]):
        done = subprocess.run([sys.executable, "-m", "helpers", *argv], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(installed)})
        assert done.returncode == 1, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"error: `{' '.join(argv[:1] + argv[3:])}` is one of the project's measuring runs")
        assert "Clone https://github.com/opt-notebooks/opt-notebooks" in line
