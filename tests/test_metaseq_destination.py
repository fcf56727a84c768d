"""convert-metaseq never deletes what it did not write: destinations at the source, above or inside it, the
current folder, folders in the way, folders that appear during a run, two runs at once; SIGTERM and SIGKILL
mid-conversion leave nothing behind that the next run does not remove."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from metaseq_writer import metaseq_model, write_checkpoint

from helpers.errors import CheckpointError
from helpers.metaseq import convert
from helpers.signals import Terminated

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A folder holding one checkpoint and a file of the user's beside it."""
    write_checkpoint(metaseq_model("pre-ln"), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "notes.txt").write_text("my notes")
    return tmp_path / "ckpt"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(*args: str, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "helpers", "convert-metaseq", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd, env=env, **kwargs)


@pytest.mark.parametrize("where", ["the source", "the source file", "a parent of the source", "inside the source",
                                   "the current folder"])
def test_destinations_at_above_or_inside_the_source_are_refused_and_nothing_is_deleted(tmp_path, checkpoint, where):
    before = _snapshot(tmp_path)
    dst, cwd = {"the source": (checkpoint, None), "the source file": (checkpoint / "reshard.pt", None),
                "a parent of the source": (tmp_path, None), "inside the source": (checkpoint / "hf", None),
                "the current folder": (Path("."), checkpoint)}[where]
    done = _cli(str(checkpoint), str(dst), "--overwrite", cwd=cwd)
    assert done.returncode == 1 and "Nothing was changed" in done.stderr, done.stderr
    assert "pass --overwrite" not in done.stderr
    assert _snapshot(tmp_path) == before  # every file where it was, nothing added


def test_a_folder_of_the_users_is_refused_and_overwrite_is_not_suggested(tmp_path, checkpoint):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"holds other files \(keep.txt\)") as info:
        convert(checkpoint, tmp_path / "hf")
    assert "--overwrite" not in str(info.value)
    with pytest.raises(CheckpointError, match="did not write .*keep.txt.* nothing was deleted"):
        convert(checkpoint, tmp_path / "hf", overwrite=True)
    assert _snapshot(tmp_path / "hf") == {"keep.txt": b"mine"}
    (tmp_path / "afile").write_text("mine too")
    with pytest.raises(CheckpointError, match="is not a folder"):
        convert(checkpoint, tmp_path / "afile", overwrite=True)
    assert (tmp_path / "afile").read_text() == "mine too"


def test_overwrite_replaces_an_earlier_conversion_and_only_that(tmp_path, checkpoint):
    first = convert(checkpoint, tmp_path / "hf")
    marker = json.loads((tmp_path / "hf" / "conversion.json").read_text())
    assert sorted(marker["files_written"]) == sorted(p.name for p in (tmp_path / "hf").iterdir())
    with pytest.raises(CheckpointError, match="holds an earlier conversion: pass --overwrite"):
        convert(checkpoint, tmp_path / "hf")
    second = convert(checkpoint, tmp_path / "hf", overwrite=True)
    assert second.files == first.files and (tmp_path / "hf" / "config.json").exists()
    (tmp_path / "hf" / "my-eval.txt").write_text("results")  # the user adds a file to the output
    with pytest.raises(CheckpointError, match="did not write .*my-eval.txt"):
        convert(checkpoint, tmp_path / "hf", overwrite=True)
    assert (tmp_path / "hf" / "my-eval.txt").read_text() == "results" and (tmp_path / "hf" / "config.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_empty_folder_is_used(tmp_path, checkpoint):
    (tmp_path / "hf").mkdir()
    convert(checkpoint, tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").exists()


def test_a_destination_that_appears_during_the_run_is_left_alone(tmp_path, checkpoint, monkeypatch):
    import helpers.checkpoints.convert as stages

    real = stages.save_companions

    def someone_else_writes_there(folder, config):
        (tmp_path / "hf").mkdir()
        (tmp_path / "hf" / "theirs.txt").write_text("theirs")
        real(folder, config)

    monkeypatch.setattr(stages, "save_companions", someone_else_writes_there)
    for overwrite in (False, True):
        with pytest.raises(CheckpointError, match="appeared while converting .* left as it is. The converted model "
                                                  "is complete in (.*hf-converted-[0-9a-f]+)") as info:
            convert(checkpoint, tmp_path / "hf", overwrite=overwrite)
        assert _snapshot(tmp_path / "hf") == {"theirs.txt": b"theirs"}
        kept = Path(str(info.value).split("complete in ")[1].split(":")[0])
        assert (kept / "model.safetensors").exists() and not (kept / ".helpers-partial.json").exists()
        (tmp_path / "hf" / "theirs.txt").unlink()
        (tmp_path / "hf").rmdir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_two_conversions_to_one_new_destination(tmp_path, checkpoint, monkeypatch):
    """The second is refused while the first runs; neither result is silently replaced."""
    import helpers.checkpoints.convert as stages

    started, release, errors = threading.Event(), threading.Event(), []
    real = stages.save_companions

    def slow(folder, config):
        started.set()
        release.wait(60)
        real(folder, config)

    monkeypatch.setattr(stages, "save_companions", slow)
    def run_first():
        try:
            convert(checkpoint, tmp_path / "hf")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    first = threading.Thread(target=run_first)
    first.start()
    assert started.wait(60)
    done = _cli(str(checkpoint), str(tmp_path / "hf"))  # another process, while the first is writing
    release.set()
    first.join(60)
    assert done.returncode == 1 and "Another conversion to" in done.stderr and "is running" in done.stderr
    assert (tmp_path / "hf" / "model.safetensors").exists() and not errors
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_sigterm_mid_conversion_removes_the_partial_output(tmp_path, checkpoint, monkeypatch):
    import helpers.checkpoints.convert as stages

    real = stages.ShardWriter.add

    def terminated_mid_way(self, name, tensor):
        real(self, name, tensor)
        if ".layers.1." in name:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(stages.ShardWriter, "add", terminated_mid_way)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        convert(checkpoint, tmp_path / "hf")
    assert signal.getsignal(signal.SIGTERM) is previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


KILL_MID_WAY = """
import os, signal, sys
import helpers.checkpoints.write as write
real = write.ShardWriter.add
def add(self, name, tensor):
    real(self, name, tensor)
    if ".layers.1." in name:
        self.flush()
        os.kill(os.getpid(), signal.{sig})
write.ShardWriter.add = add
from helpers.__main__ import main
sys.exit(main(["convert-metaseq", sys.argv[1], sys.argv[2]]))
"""


def test_sigterm_through_the_command_line(tmp_path, checkpoint):
    done = subprocess.run([sys.executable, "-c", KILL_MID_WAY.format(sig="SIGTERM"), str(checkpoint), str(tmp_path / "hf")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 143 and "terminated" in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_after_sigkill_the_next_run_removes_the_partial_output_and_says_so(tmp_path, checkpoint):
    killed = subprocess.run([sys.executable, "-c", KILL_MID_WAY.format(sig="SIGKILL"), str(checkpoint),
                             str(tmp_path / "hf")], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert len(leftovers) == 1 and any(leftovers[0].glob("part-*.safetensors"))
    (tmp_path / ".other.partial-0123abcd").mkdir()  # not a conversion's (no claim): an empty one goes,
    (tmp_path / ".keep.partial-0123abcd").mkdir()   # one with files in it stays
    (tmp_path / ".keep.partial-0123abcd" / "x").write_text("x")
    done = _cli(str(checkpoint), str(tmp_path / "hf"))
    assert done.returncode == 0, done.stderr
    assert f"Removed {leftovers[0]}" in done.stderr and "was killed" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep.partial-0123abcd", "ckpt", "hf"]


def test_a_running_conversions_partial_output_is_not_taken_for_a_stale_one(tmp_path, checkpoint):
    """Another live process's partial output (here: this test process's) is left alone."""
    from helpers.checkpoints.destination import claim

    theirs = claim(tmp_path / "other", lambda note: None)
    convert(checkpoint, tmp_path / "hf")
    assert (theirs / ".helpers-partial.json").exists()


def test_a_full_disk_says_so_and_leaves_nothing(tmp_path, checkpoint, monkeypatch):
    import errno

    import helpers.checkpoints.convert as stages

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stages.ShardWriter, "flush", full)
    with pytest.raises(CheckpointError, match="ran out of space .* Nothing was left behind"):
        convert(checkpoint, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_disk_full_as_the_conversion_starts_leaves_nothing_and_the_next_run_is_clean(tmp_path, checkpoint,
                                                                                      monkeypatch):
    """Issue 26, item 8: the partial output was left with an empty claim, and the next run kept it, saying it
    was "not marked as one of this version's"."""
    import errno

    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".helpers-partial.json"):
            self.touch()  # the file is created, then its first block cannot be written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(CheckpointError, match="No space left on device"):
        convert(checkpoint, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    monkeypatch.setattr(Path, "write_text", real)
    report = convert(checkpoint, tmp_path / "hf")
    assert not [n for n in report.notes if "not marked" in n]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf"]


def test_the_leftover_of_a_conversion_that_failed_as_it_started_is_recognised_and_removed(tmp_path, checkpoint):
    leftover = tmp_path / ".hf.partial-0123abcd"
    leftover.mkdir()
    (leftover / ".helpers-partial.json").write_text("")  # what an earlier version left on a full disk
    report = convert(checkpoint, tmp_path / "hf")
    assert not leftover.exists()
    assert any("left by a conversion that failed as it started" in n for n in report.notes)
    assert not [n for n in report.notes if "not marked" in n]
