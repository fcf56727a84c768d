"""Colab's runtime as the tests emulate it: its published versions, and the constraints that build `.venv-colab`."""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.utils import canonicalize_name

from helpers.install import read_requirements


def pins(runtime: str | Path) -> dict[str, str]:
    """Colab's preinstalled versions (`colab-gpu-runtime.txt`), by canonical name."""
    return {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in read_requirements(runtime)}


def constraints(runtime: str | Path, local: str | Path) -> str:
    """Colab's versions, then this repository's pins for whatever Colab does not have (torch's CPU
    stand-in, the test tools): the constraints every install into `.venv-colab` runs under."""
    colab = read_requirements(runtime)
    held = {canonicalize_name(r.name) for r in colab}
    ours = [r for r in read_requirements(local) if canonicalize_name(r.name) not in held]
    return "\n".join(str(r) for r in [*colab, *ours]) + "\n"


if __name__ == "__main__":
    sys.stdout.write(constraints(sys.argv[1], sys.argv[2]))
