"""Running `serve`'s command where vLLM is installed: finding vLLM's Python, the key passed by environment."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

VLLM_PYTHON_ENV = "OPT_VLLM_PYTHON"  # a Python that has vLLM, where it is not this one or .venv-vllm's


def vllm_python() -> str | None:
    """A Python that can run vLLM: ${OPT_VLLM_PYTHON}, ./.venv-vllm/bin/python, or this one if it has vLLM."""
    named = os.environ.get(VLLM_PYTHON_ENV)
    if named:
        return named if Path(named).exists() else None
    local = Path(".venv-vllm") / "bin" / "python"
    if local.exists():
        return str(local.absolute())
    return sys.executable if importlib.util.find_spec("vllm") is not None else None


def run_server(command: list[str], environment: dict[str, str]) -> int:
    """Run vLLM in the foreground until it exits or Ctrl-C; its exit code. `$VAR` values are read from this
    environment here, so a key never appears on a command line (where `ps` shows it)."""
    env = dict(os.environ)
    for name, value in environment.items():
        env[name] = os.environ.get(value[1:], "") if value.startswith("$") else value
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
