"""The notebooks folder, and the runner the notebook tests use (helpers.notebooks)."""

from pathlib import Path

from helpers.notebooks import outputs_text
from helpers.notebooks import run_notebook as _run

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str, parameters: dict, timeout: int = 600):
    return _run(NOTEBOOKS / name, parameters, timeout=timeout)


__all__ = ["NOTEBOOKS", "outputs_text", "run_notebook"]
