"""Third reliability round (issue 26): model folders that are not what they seem, standard input that is huge
or not UTF-8, the setup cell's installer on a bare Python, and fp32 batches that stay exact."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

import pytest

from helpers.cli.main import main
from helpers.errors import ModelLoadError
from helpers.loading.model import load_model
from helpers.loading.sources import resolve_source

# ------------------------------------------------------------------------------------ model folders


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def test_a_weights_file_that_is_a_fifo_is_refused_by_name_instead_of_hanging(tiny_pre_folder, tmp_path):
    folder = _copy(tiny_pre_folder, tmp_path / "model")
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    outcome = {}

    def load():
        try:
            load_model(str(folder), device="cpu", dtype="float32")
        except Exception as exc:  # what the load raised, judged below
            outcome["error"] = exc

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=60)
    if worker.is_alive():  # the old code blocks in open(): give its reader an end of file so the thread ends
        fd = os.open(folder / "model.safetensors", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(timeout=60)
        pytest.fail("load_model blocked on a FIFO instead of refusing it")
    assert isinstance(outcome.get("error"), ModelLoadError), outcome
    assert "model.safetensors is a named pipe (FIFO), not a regular file" in str(outcome["error"])


def test_a_tokenizer_file_that_is_a_folder_is_refused_by_name(tiny_pre_folder, tmp_path):
    folder = _copy(tiny_pre_folder, tmp_path / "model")
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").mkdir()
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json is a folder, not a regular file"):
        load_model(str(folder), device="cpu", dtype="float32")


def test_a_dangling_weights_link_is_named_with_its_target(tiny_pre_folder, tmp_path):
    folder = _copy(tiny_pre_folder, tmp_path / "model")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(tmp_path / "blobs" / "gone")
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is a symbolic link to '.*gone', which cannot be followed"):
        load_model(str(folder), device="cpu", dtype="float32")


@pytest.mark.parametrize("content, held", [("[]", "a JSON list"), ('"opt"', "a JSON string"), ("null", "null"),
                                           ("7", "a number")])
def test_a_config_that_is_not_a_json_object_is_named_with_what_it_should_hold(tmp_path, content, held):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(content)
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(folder), device="cpu", dtype="float32")
    assert f"config.json holds {held}" in str(caught.value) and "one JSON object" in str(caught.value)


def test_a_binary_or_huge_config_is_named_not_a_traceback(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_bytes(b"\x93NUMPY\xff\xfe" + bytes(range(256)))
    with pytest.raises(ModelLoadError, match=r"config\.json is not text \(binary data"):
        load_model(str(folder), device="cpu", dtype="float32")
    with open(folder / "config.json", "wb") as handle:  # sparse: 2 GiB of nothing on disk
        handle.truncate(2 << 30)
    with pytest.raises(ModelLoadError, match=r"config\.json is 2,147,483,648 bytes, not a model's config"):
        load_model(str(folder), device="cpu", dtype="float32")


def test_the_cli_names_a_bad_config_in_one_line(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("[]")
    assert main(["generate", "--model", str(folder), "--device", "cpu", "Hello"]) == 1
    err = capsys.readouterr().err
    assert "config.json holds a JSON list" in err and "AttributeError" not in err


def test_metaseq_files_are_looked_for_where_a_release_keeps_them_listed_relative_without_repeats(tmp_path):
    folder = tmp_path / "release"
    for name in ["a.pt", "model/restored.pt", "sub/a.pt", "deep/er/x.pt", ".git/lfs/y.pt"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    with pytest.raises(ModelLoadError) as caught:
        resolve_source(str(folder))
    message = str(caught.value)
    assert "(a.pt, model/restored.pt, sub/a.pt)" in message  # one level down at most; .git and deeper not walked
    assert "x.pt" not in message and "y.pt" not in message


def test_the_filesystem_root_is_not_walked(monkeypatch):
    def no_walk(*args, **kwargs):
        raise AssertionError("a recursive walk of the folder")

    monkeypatch.setattr(Path, "rglob", no_walk)
    monkeypatch.setattr(os, "walk", no_walk)
    original_glob = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern, **kw: (
        no_walk() if "**" in pattern else original_glob(self, pattern, **kw)))
    with pytest.raises(ModelLoadError, match="The folder '/' has no config.json"):
        resolve_source("/")


def test_a_symlink_loop_is_called_a_loop_not_missing(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(ModelLoadError, match="is a symbolic link loop"):
        resolve_source(str(loop))
    assert main(["generate", "--model", str(loop), "--device", "cpu", "Hello"]) == 1
    assert "symbolic link loop" in capsys.readouterr().err


def test_a_link_to_nothing_names_its_target(tmp_path):
    link = tmp_path / "opt-folder"
    link.symlink_to(tmp_path / "moved-away")
    with pytest.raises(ModelLoadError, match=r"is a symbolic link to '.*moved-away', which does not exist"):
        resolve_source(str(link))


def test_an_unreadable_folder_says_permission_denied(tmp_path, monkeypatch):
    """As root every folder is readable, so the operating system's answer for another user is stood in for."""
    folder = tmp_path / "private"
    folder.mkdir()
    original_stat = Path.stat

    def stat(self, *args, **kwargs):
        if self == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return original_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    with pytest.raises(ModelLoadError, match="cannot be opened: permission denied"):
        resolve_source(str(folder))
