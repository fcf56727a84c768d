"""The Makefile's commands as a user types them (`make -n`: what would run, nothing run)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def playground_command(model: str) -> str:
    done = subprocess.run(["make", "-n", "-s", "playground", f"MODEL={model}"], cwd=REPO, capture_output=True,
                          text=True, check=True)
    return done.stdout


@pytest.mark.parametrize("model, expected", [
    ("./tests", str(REPO / "tests")),  # an existing folder, relative to where make runs
    ("../no-such-folder", str(REPO.parent / "no-such-folder")),  # still resolved here, so its error names it in full
    ("opt-1.3b", "opt-1.3b"),
    ("facebook/opt-350m", "facebook/opt-350m"),
])
def test_make_playground_resolves_a_model_folder_from_where_make_runs(model, expected):
    assert f"OPT_MODEL={expected} " in playground_command(model)


def _commands(*targets: str, **variables: str) -> list[list[str]]:
    """The commands `make -n` prints for `targets`, each split as the shell would (continued lines joined)."""
    import shlex

    done = subprocess.run(["make", "-n", "-s", *targets, *(f"{k}={v}" for k, v in variables.items())], cwd=REPO,
                          capture_output=True, text=True, check=True)
    return [shlex.split(line) for line in done.stdout.replace("\\\n", " ").splitlines() if line.strip()]


def test_make_gpu_check_runs_the_tools_module_and_dry_goes_to_the_cpu():
    (command,) = [c for c in _commands("gpu-check", DRY="1") if "-m" in c and "pip" not in c]
    assert command[1:4] == ["-m", "tools.gpu_check", "--dry-run"] and command[-1] == "test-artifacts/gpu-check-dry"
    (real,) = [c for c in _commands("gpu-check") if "-m" in c and "pip" not in c]
    assert "--dry-run" not in real and real[-1] == "benchmarks"
    done = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "--dry-run" in done.stdout


def test_the_measuring_targets_commands_parse_as_the_command_line_takes_them():
    """plan-check-gpu, bench and bench-gpu: every flag and --methods name they pass is one the CLI takes today
    (without a deprecation note), so `make` does not stop on a usage error after minutes of work."""
    from helpers.analysis.bench_rows import ROWS
    from helpers.cli.main import build_parser

    commands = [c[c.index("helpers") + 1:] for c in _commands("plan-check-gpu", "bench", "bench-gpu")
                if c[1:3] == ["-m", "helpers"]]
    assert {c[0] for c in commands} == {"plan", "bench", "leaks"}
    for argv in commands:
        args = build_parser().parse_args(argv)
        if argv[0] == "plan":
            assert args.check and args.plan != "auto" and args.old_method is None
        if argv[0] == "bench" and args.methods:
            assert set(args.methods.split(",")) <= set(ROWS), argv
