"""What a notebook's setup cell installs: the requirements this runtime lacks, never a change to what it has."""

# The setup cell runs this file before `helpers` can be imported (`runpy.run_path`, or `python -I` as a
# script), so it needs only the standard library, `packaging` and pip: no import from this package.
from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

GPU_ONLY = {"bitsandbytes"}  # useless without a CUDA GPU: installed only on a GPU runtime


@dataclass(frozen=True)
class Step:
    """One distribution pip's dry run would install, and the version this runtime already has (if any)."""

    name: str
    version: str
    installed: str | None
    source: str  # what to hand pip: `name==version`, or the local folder it came from


def read_requirements(path: str | Path) -> list[Requirement]:
    """The requirements (or constraints) in a pip requirements file: one a line, `#` starts a comment."""
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(Requirement(line))
    return out


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def has_cuda_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def lacking(requirements: list[Requirement], gpu: bool) -> tuple[list[Requirement], list[tuple[Requirement, str]]]:
    """Split what this runtime does not satisfy into what is missing and what it has at another version
    (kept as it is). Requirements whose markers exclude this platform, and GPU-only ones without a GPU,
    are left out."""
    missing, other = [], []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate():
            continue
        if canonicalize_name(req.name) in GPU_ONLY and not gpu:
            continue
        version = installed_version(req.name)
        if version is None:
            missing.append(req)
        elif not req.specifier.contains(version, prereleases=True):
            other.append((req, version))
    return missing, other


def pip_plan(targets: list[str], pip_options: list[str] = ()) -> list[Step]:
    """What `pip install TARGETS` would install here: pip's own resolution (`--dry-run --report`)."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", *pip_options, *targets]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip could not work out how to install {' '.join(targets)} here:\n{done.stderr.strip()}")
    steps = []
    for item in json.loads(done.stdout)["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        url = item["download_info"]["url"]
        local = "dir_info" in item["download_info"] and url.startswith("file://")
        steps.append(Step(name, version, installed_version(name), url[len("file://"):] if local else f"{name}=={version}"))
    return steps


def install(requirements: str | Path, package: str | Path | None = None, gpu: bool | None = None,
            dry_run: bool = False, pip_options: list[str] = (), say=print) -> list[Step]:
    """Install what `requirements` (and the project folder `package`, if given) need that this runtime
    lacks, exactly as pip's dry run planned it (`--no-deps`); refuse if that plan would replace anything
    already installed. Returns the plan."""
    gpu = has_cuda_gpu() if gpu is None else gpu
    missing, other = lacking(read_requirements(requirements), gpu)
    for req, version in other:
        say(f"Keeping {req.name} {version} as this runtime has it ({Path(requirements).name} asks for {req}).")
    targets = [str(req) for req in missing] + ([str(package)] if package is not None else [])
    steps = pip_plan(targets, pip_options) if targets else []
    changes = [s for s in steps if s.installed is not None]
    if changes:
        listed = ", ".join(f"{s.name} {s.installed} -> {s.version}" for s in changes)
        raise RuntimeError(
            f"Installing {' '.join(targets)} would replace what this runtime already has ({listed}); changing a "
            "preinstalled package under a running kernel breaks it, so nothing was installed. On Colab: "
            "Runtime > Disconnect and delete runtime, then run this cell again on the fresh runtime.")
    if not steps:
        say("Everything the notebooks need is installed already.")
        return steps
    listed = ", ".join(f"{s.name} {s.version}" for s in steps)
    if dry_run:
        say(f"Would install {listed}; nothing already installed would change.")
        return steps
    say(f"Installing {listed} (nothing already installed changes) ...")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *pip_options, *(s.source for s in steps)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip failed to install {listed}:\n{done.stderr.strip()}")
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("requirements", help="a pip requirements file (the repository's requirements.txt)")
    parser.add_argument("--package", help="the project folder, installed too (without its dependencies' changes)")
    gpu = parser.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="gpu", action="store_true", default=None, help="install GPU-only packages too")
    gpu.add_argument("--no-gpu", dest="gpu", action="store_false", help="leave GPU-only packages out")
    parser.add_argument("--dry-run", action="store_true", help="say what would be installed, install nothing")
    args = parser.parse_args(argv)
    try:
        install(args.requirements, args.package, args.gpu, args.dry_run)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
