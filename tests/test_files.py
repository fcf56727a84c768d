"""Files the project writes are written whole or not at all (issue 26 item 5): on a full disk the file that was
there survives byte for byte and no temporary file is left; the command says so in one line."""

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers.cli.main import main
from helpers.errors import OutputWriteError
from helpers.files import save_figure, write_atomically

REPO = Path(__file__).resolve().parents[1]
OLD = b'{"old": "results, still good"}\n'


class _NoSpace:
    """A file whose writes fail as a full disk's do: the fallback where no small filesystem can be mounted."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """A folder on a filesystem with no space left, holding results.json (OLD): a real 256 KiB tmpfs, filled,
    where this user may mount one (root: CI), else writes that fail with ENOSPC."""
    folder = tmp_path / "disk"
    folder.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                                 capture_output=True).returncode == 0
    except OSError:  # no mount command
        mounted = False
    try:
        (folder / "results.json").write_bytes(OLD)
        (folder / "figure.png").write_bytes(b"\x89PNG old figure")
        if mounted:
            with open(folder / "filler", "wb", buffering=0) as filler:
                with pytest.raises(OSError) as full:
                    while True:
                        filler.write(b"\0" * 4096)
                assert full.value.errno == errno.ENOSPC
        else:
            import helpers.files

            real = os.fdopen
            monkeypatch.setattr(helpers.files.os, "fdopen", lambda *a, **k: _NoSpace(real(*a, **k)))
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


def _left_as_it_was(folder: Path) -> None:
    assert (folder / "results.json").read_bytes() == OLD
    assert (folder / "figure.png").read_bytes() == b"\x89PNG old figure"
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".partial")]


def test_a_full_disk_leaves_the_old_file_as_it_was(full_disk):
    with pytest.raises(OutputWriteError, match="no space left .* The file that was there is unchanged"):
        write_atomically(full_disk / "results.json", json.dumps({"new": "x" * 400_000}))
    _left_as_it_was(full_disk)


def test_a_figure_on_a_full_disk_leaves_the_old_one(full_disk):
    from matplotlib.figure import Figure

    figure = Figure()
    figure.add_subplot().plot(range(1000))
    with pytest.raises(OutputWriteError):
        save_figure(figure, full_disk / "figure.png", dpi=300)
    _left_as_it_was(full_disk)


def _committed_report(*args, **kwargs):
    from helpers.analysis.benchmark import Report

    return Report.read(REPO / "benchmarks" / "cpu-opt-125m.json")


LEAKS = {"model": "m", "cuda_allocated_bytes_after_each": [0], "resident_growth_bytes": 0, "filler": "x" * 400_000,
         "resident_growth_after_first_bytes": 0, "threads_after_each": [1, 1], "faults_injected": 0}
PLAN_CHECK = {"model": "m", "plan": "fp32-cpu", "method": "fp32-cpu", "predicted_bytes": 1, "measured_bytes": 1,
              "measured_on": "here", "relative_error": 0.0, "new_tokens": 1, "tokens_per_second": 1.0,
              "filler": "x" * 400_000}


@pytest.mark.parametrize("command", [
    ["bench", "--json", "{folder}/results.json"],
    ["bench", "--json", "{folder}/new.json", "--plot", "{folder}/figure.png"],
    ["leaks", "--model", "opt-125m", "--out", "{folder}/results.json"],
    ["plan", "--model", "opt-125m", "--check", "--out", "{folder}/results.json"],
], ids=["bench --json", "bench --plot", "leaks --out", "plan --check --out"])
def test_each_command_s_results_on_a_full_disk(full_disk, monkeypatch, capsys, command):
    """bench --json on a full 5 MiB disk once left 4 KB of broken JSON where good results had been."""
    import helpers.analysis.benchmark
    import tools.leaks
    import tools.plan_check

    monkeypatch.setattr(helpers.analysis.benchmark, "run_suite", _committed_report)
    monkeypatch.setattr(tools.leaks, "leak_check", lambda *a, **k: LEAKS)
    monkeypatch.setattr(tools.plan_check, "check_plan", lambda *a, **k: PLAN_CHECK)
    if "new.json" in command[2]:  # the JSON fits when it is the plot that does not: free what the JSON needs
        monkeypatch.setattr(helpers.analysis.benchmark.Report, "write", lambda self, path: None)
    assert main([part.format(folder=full_disk) for part in command]) == 1
    err = capsys.readouterr().err
    assert "error: Could not write" in err and "no space left" in err and "Traceback" not in err
    _left_as_it_was(full_disk)


def test_a_write_replaces_the_file_keeping_its_permissions(tmp_path):
    old = tmp_path / "deeper" / "results.json"
    write_atomically(old, "first\n")
    assert old.read_text() == "first\n" and old.stat().st_mode & 0o777 == 0o666 & ~_umask()
    old.chmod(0o640)
    write_atomically(old, b"second\n")
    assert old.read_bytes() == b"second\n" and old.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in old.parent.iterdir()] == ["results.json"]


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    from helpers.files import replacing

    path = tmp_path / "results.json"
    path.write_bytes(OLD)
    with pytest.raises(KeyboardInterrupt), replacing(path) as file:
        file.write("half of the new")
        raise KeyboardInterrupt
    assert path.read_bytes() == OLD and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
