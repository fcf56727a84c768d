"""Execute a notebook top to bottom with parameters injected after its `parameters` cell."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str, parameters: dict, timeout: int = 600) -> nbformat.NotebookNode:
    """Run notebooks/NAME in its folder, papermill-style: one injected cell overrides the parameters."""
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} must have exactly one cell tagged 'parameters'"
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(tagged[0] + 1, injected)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}},
                   allow_errors=False).execute()
    return nb


def outputs_text(nb: nbformat.NotebookNode) -> str:
    """Everything the notebook printed or displayed, as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append(out["text"])
            for key in ("text/markdown", "text/plain"):
                if key in out.get("data", {}):
                    parts.append(out["data"][key])
    return "\n".join(parts)
