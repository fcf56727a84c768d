"""Starting and stopping a real vLLM server (its CPU build) for the served tests and notebook 08."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).parents[1]
VLLM_PYTHON_ENV = "OPT_VLLM_PYTHON"  # where vLLM's Python is, if not .venv-vllm/bin/python
START_SECONDS = 900  # a busy 2-core machine took up to 4 minutes; CI's first start compiles nothing more
MISSING = ("vLLM's CPU build is not installed ({python} not found): run `make install-vllm`, set {env} to a "
           "Python that has vLLM, or deselect these tests with -m 'not served'.")


def vllm_python() -> Path | None:
    """vLLM's Python: ${OPT_VLLM_PYTHON}, else .venv-vllm/bin/python; None where neither is there."""
    path = Path(os.environ.get(VLLM_PYTHON_ENV) or ROOT / ".venv-vllm" / "bin" / "python")
    return path if path.exists() else None


def missing_message() -> str:
    shown = os.environ.get(VLLM_PYTHON_ENV) or ".venv-vllm/bin/python"
    return MISSING.format(python=shown, env=VLLM_PYTHON_ENV)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """One vLLM OpenAI server on 127.0.0.1 for a folder; `url` once started; `stop()` ends it and its workers."""

    def __init__(self, folder: Path, log: Path, tensor_parallel: int = 1, max_model_len: int = 512):
        self.folder, self.log, self.port = folder, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", VLLM_PYTHON_ENV: str(vllm_python())}
        if tensor_parallel == 1:  # through the project's own command, as users start it
            self.command = [sys.executable, "-m", "helpers", "serve", str(folder), "--gpus", "0", "--context",
                            str(max_model_len), "--port", str(self.port)]
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        else:  # one core per worker: vLLM's CPU build binds each worker's OpenMP threads
            self.command = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                            "--host", "127.0.0.1", "--port", str(self.port), "--max-model-len", str(max_model_len),
                            "--dtype", "float32", "--tensor-parallel-size", str(tensor_parallel),
                            "--distributed-executor-backend", "mp"]
            self.env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i % os.cpu_count()) for i in range(tensor_parallel))
        self.process: subprocess.Popen | None = None

    def start(self) -> VLLMServer:
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, cwd=ROOT)  # its own group: stop() ends its workers too
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with code {self.process.returncode} while starting:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(2)
        self.stop()
        raise RuntimeError(f"vLLM did not answer within {START_SECONDS} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def metric(self, name: str) -> float:
        """The sum of one Prometheus metric's samples from the server's /metrics."""
        text = httpx.get(self.url.removesuffix("/v1") + "/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
