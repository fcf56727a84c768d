"""A measuring run's first check: package versions, the CUDA device, and carried wheels installed offline."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "accelerate", "bitsandbytes", "safetensors", "huggingface_hub", "tokenizers",
            "numpy", "matplotlib", "psutil")
CARRIED = ("bitsandbytes",)  # what a GPU machine without a network may lack: `make gpu-wheels` fetches its wheel


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def requirements(root: Path = REPO) -> list[str]:
    """The project's requirements as pyproject.toml states them (its dependencies and the `gpu` extra)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: nothing to check against
        return []
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("gpu", []))


def check_requirements(specs: list[str]) -> list[dict]:
    """Each requirement with the installed version and whether it satisfies it."""
    from packaging.requirements import Requirement

    rows = []
    for spec in specs:
        requirement = Requirement(spec)
        installed = version(requirement.name)
        ok = installed is not None and requirement.specifier.contains(installed, prereleases=True)
        rows.append({"requirement": spec, "installed": installed, "ok": ok})
    return rows


def cuda_facts() -> dict:
    """The CUDA device as torch sees it, and the driver as nvidia-smi reports it (where it is on the PATH)."""
    import torch

    facts: dict = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
                   "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if facts["available"]:
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        facts.update(devices=torch.cuda.device_count(), name=props.name, capability=[props.major, props.minor],
                     total_bytes=total, free_bytes=free, multiprocessors=props.multi_processor_count)
    if shutil.which("nvidia-smi"):
        query = "name,driver_version,memory.total,clocks.max.sm,clocks.max.memory"
        try:
            out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            facts["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            facts["nvidia_smi"] = f"failed: {exc}"
    return facts


def install_offline(package: str, wheels: Path, target: Path) -> dict:
    """Install `package` from the wheels in `wheels` (no index, no network, no dependencies: the machine has
    them) into `target`, put `target` on this process's path and its children's, and check that it imports."""
    record: dict = {"package": package, "wheels": sorted(p.name for p in wheels.glob("*.whl")) if wheels.is_dir() else []}
    if not record["wheels"]:
        record["error"] = (f"{package} is not installed and {wheels} holds no wheel: run `make gpu-wheels` on a machine "
                           "with a network, then carry that folder")
        return record
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--quiet",
               "--disable-pip-version-check", "--find-links", str(wheels), "--target", str(target), package]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    record["command"] = " ".join(command)
    if done.returncode != 0:
        record["error"] = f"pip failed ({done.returncode}): {(done.stderr or done.stdout)[-1500:]}"
        return record
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p)
    importlib.invalidate_caches()
    record["installed"] = version(package)
    probe = subprocess.run([sys.executable, "-c", f"import {package}; print({package}.__version__)"],
                           capture_output=True, text=True, timeout=300, env=os.environ.copy())
    record["imports"] = probe.returncode == 0
    if probe.returncode != 0:
        record["error"] = f"installed, but importing it failed: {probe.stderr[-1500:]}"
    return record


def preflight(wheels: Path | None, target: Path) -> dict:
    """The machine's packages and CUDA device, after installing any carried package it lacks."""
    installs = [install_offline(p, wheels, target / "site") for p in CARRIED if version(p) is None and wheels]
    checked = check_requirements(requirements())
    return {
        "python": sys.version.split()[0], "executable": sys.executable,
        "packages": {p: version(p) for p in PACKAGES},
        "installed_offline": installs,
        "requirements": checked,
        "unmet": [row["requirement"] for row in checked if not row["ok"]],
        "cuda": cuda_facts(),
    }
