"""Running out of memory (issue 26 item 12): under a low address-space limit (`ulimit -v`), one line saying what ran
out and what to do, and a non-zero exit; never a traceback, an abort, or `error: MemoryError: ` and nothing more."""

import resource
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Imports torch and transformers first, then caps the address space a little above what the process already
# maps, and runs the command line: the first sizeable allocation after that fails, as under `ulimit -v 800M`.
AFTER_IMPORTS = """
import resource, sys
import torch, transformers
from transformers import OPTForCausalLM
from helpers.cli.main import main
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 20 * 2**20, resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))
"""


def _limited(limit_bytes: int):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, resource.RLIM_INFINITY))


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "ABORT" not in done.stderr, done.stderr[-2000:]
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    return line


@pytest.mark.parametrize("megabytes", [600, 800])
def test_a_limit_too_low_to_import_torch_is_named_before_the_import(tiny_pre_folder, megabytes):
    """600 MB: the import died in a traceback (or glibc's 'cannot allocate memory for thread-local data: ABORT');
    800 MB: 'error: MemoryError: '. Now both are refused before torch is imported, with the limit named."""
    done = subprocess.run([sys.executable, "-m", "helpers", "generate", "--model", str(tiny_pre_folder), "hi"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          preexec_fn=_limited(megabytes * 2**20))
    line = _one_line_error(done)
    assert f"may use only {megabytes}.0 MiB of address space (`ulimit -v`)" in line
    assert "importing torch and transformers" in line and "ulimit -v unlimited" in line


def test_help_still_answers_under_a_low_limit():
    done = subprocess.run([sys.executable, "-m", "helpers", "generate", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, preexec_fn=_limited(300 * 2**20))
    assert done.returncode == 0 and "--max-new-tokens" in done.stdout


def test_memory_running_out_mid_run_says_what_ran_out_and_what_to_do(tiny_pre_folder):
    done = subprocess.run([sys.executable, "-c", AFTER_IMPORTS, "generate", "--model", str(tiny_pre_folder),
                           "--max-new-tokens", "2", "hi"], cwd=REPO, capture_output=True, text=True, timeout=120)
    line = _one_line_error(done)
    assert line != "error: MemoryError: " and "ran out of memory" in line
    assert "of address space (`ulimit -v`)" in line and "Raise the limit" in line


def test_the_out_of_memory_messages():
    """One owner: the GPU's message (the playground says it too), RAM's, and the limit's; other errors are not."""
    import errno

    import torch

    from helpers.errors import GPU_OUT_OF_MEMORY, out_of_memory_message

    assert out_of_memory_message(torch.cuda.OutOfMemoryError("CUDA out of memory")) == GPU_OUT_OF_MEMORY
    assert "ran out of memory" in GPU_OUT_OF_MEMORY and "python -m helpers plan" in GPU_OUT_OF_MEMORY
    for exc in (MemoryError(), OSError(errno.ENOMEM, "Cannot allocate memory"),
                ImportError("libtorch_cpu.so: failed to map segment from shared object")):
        assert "ran out of memory" in out_of_memory_message(exc)
    for exc in (ValueError("x"), OSError(errno.ENOENT, "no such file"), ImportError("No module named 'x'")):
        assert out_of_memory_message(exc) is None
