"""The Makefile's commands as a user types them (`make -n`: what would run, nothing run)."""

import subprocess
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
