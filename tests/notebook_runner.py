"""Run a notebook top to bottom with parameters injected after its `parameters` cell (papermill's way), for
the notebook tests and make: `python tests/notebook_runner.py notebooks/03_compare_sizes.ipynb RANDOM_WEIGHTS=True
'MODELS=["opt-125m"]'`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _run(path: str | Path, parameters: dict, timeout: int = 1800):
    """Execute the notebook at `path` in its own folder; returns the executed notebook (nbformat)."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{path.name} must have exactly one cell tagged 'parameters' (it has {len(tagged)}).")
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(tagged[0] + 1, injected)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.resolve().parent)}}).execute()
    return nb


def run_notebook(name: str, parameters: dict, timeout: int = 600):
    """Run notebooks/`name` with `parameters`; returns the executed notebook."""
    return _run(NOTEBOOKS / name, parameters, timeout=timeout)


def outputs_text(nb) -> str:
    """Everything an executed notebook printed or displayed, as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append(out["text"])
            for key in ("text/markdown", "text/plain"):
                if key in out.get("data", {}):
                    parts.append(out["data"][key])
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    parameters = {}
    for item in argv[1:]:
        name, _, value = item.partition("=")
        parameters[name] = ast.literal_eval(value)
    _run(Path(argv[0]), parameters)
    print(f"ran {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
