"""Colab's preinstalled versions (../shared/colab/colab-gpu-runtime.txt): every requirement accepts them, and
pip, resolving requirements.txt with all of them held, changes none."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from colab_runtime import pins
from conftest import SHARED
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from helpers.install import read_requirements

REPO = Path(__file__).resolve().parents[1]
RUNTIME = SHARED / "colab" / "colab-gpu-runtime.txt"
COLAB_VENV_PYTHON = REPO / ".venv-colab" / "bin" / "python"


@pytest.fixture(scope="module")
def colab():
    if not RUNTIME.is_file():
        pytest.fail(f"Colab's versions are not at {RUNTIME} (set OPT_SHARED_DIR to the shared folder)")
    return pins(RUNTIME)


def installed(python: str) -> dict[str, str]:
    listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True)
    return {canonicalize_name(p["name"]): p["version"] for p in json.loads(listed.stdout)}


@pytest.fixture(scope="module")
def colab_python(colab) -> str:
    """An interpreter whose environment holds Colab's versions: this one under `make test-colab`, else
    `.venv-colab` (`make test` builds it before the first layer runs)."""
    for python in (sys.executable, str(COLAB_VENV_PYTHON)):
        if Path(python).exists():
            have = installed(python)
            if all(have.get(name) == ver for name, ver in colab.items()):
                return python
    pytest.skip("no environment holds Colab's versions yet: `make install-colab` builds .venv-colab")


def declared() -> dict[str, list[Requirement]]:
    """Every requirement this repository declares for the notebooks: requirements.txt, pyproject.toml's
    dependencies, environment.yml's (conda names that pip does not use, like `python=3.11`, left out)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    conda = []
    for item in yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]:
        for spec in item["pip"] if isinstance(item, dict) else [item]:
            try:
                conda.append(Requirement(spec))
            except InvalidRequirement:
                assert spec.startswith(("python=", "-e ")), spec
    return {"requirements.txt": read_requirements(REPO / "requirements.txt"),
            "requirements-test.txt": read_requirements(REPO / "requirements-test.txt"),
            "pyproject.toml": [Requirement(d) for d in project["dependencies"]], "environment.yml": conda}


def test_every_declared_range_accepts_colabs_version(colab):
    refused, checked = [], set()
    for source, reqs in declared().items():
        for req in reqs:
            name = canonicalize_name(req.name)
            if name in colab:
                checked.add(name)
                if not req.specifier.contains(colab[name], prereleases=True):
                    refused.append(f"{source}: {req} refuses Colab's {colab[name]}")
    assert not refused
    assert {"transformers", "ipywidgets", "ipykernel", "huggingface-hub", "numpy", "psutil", "accelerate"} <= checked


def test_pip_resolving_requirements_with_colabs_versions_held_changes_none(colab, colab_python):
    """pip's own resolution (`--dry-run --report`), offline, in an environment holding Colab's versions
    (and bitsandbytes, which the setup cell adds on a GPU runtime): nothing to install, nothing replaced."""
    done = subprocess.run([colab_python, "-m", "pip", "install", "--dry-run", "--quiet", "--no-index", "--report", "-",
                           "-r", str(REPO / "requirements.txt"), "-c", str(RUNTIME)],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, f"pip cannot resolve requirements.txt with Colab's versions held:\n{done.stderr}"
    planned = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(done.stdout)["install"]}
    assert planned == {}, f"pip would install or replace {planned}"
    have = installed(colab_python)
    assert {name: have[name] for name in colab} == colab  # still exactly Colab's
