"""The seed's route: git-lfs clones, pointer files caught, hub downloads refused clearly when offline."""

import shutil
import subprocess

import pytest

from helpers.errors import CheckpointError, ModelLoadError
from helpers.loading import fetch

needs_git_lfs = pytest.mark.skipif(
    shutil.which("git") is None or subprocess.run(["git", "lfs", "version"], capture_output=True).returncode != 0,
    reason="git-lfs is not installed (make test installs it as root: apt-get install git-lfs)",
)
POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 123456\n"


def make_lfs_repo(path, files: dict[str, bytes]):
    """A git repository whose *.pt files are stored with git-lfs, like the hub's metaseq repos."""
    path.mkdir(parents=True)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run(["git", "lfs", "install", "--local"], cwd=path, check=True, capture_output=True)
    subprocess.run(["git", "lfs", "track", "*.pt"], cwd=path, check=True, capture_output=True)
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    subprocess.run(["git", "add", "."], cwd=path, check=True)
    subprocess.run([*git, "commit", "-qm", "weights"], cwd=path, check=True)
    return path


def test_pointer_files_are_recognized(tmp_path):
    (tmp_path / "a.pt").write_text(POINTER)
    (tmp_path / "b.pt").write_bytes(b"PK\x03\x04" + bytes(5000))
    assert fetch.is_lfs_pointer(tmp_path / "a.pt") and not fetch.is_lfs_pointer(tmp_path / "b.pt")
    assert fetch.find_lfs_pointers(tmp_path) == [tmp_path / "a.pt"]
    with pytest.raises(CheckpointError, match=r"git lfs install && git lfs pull` in"):
        fetch.check_not_lfs_pointer(tmp_path / "a.pt")


@needs_git_lfs
def test_clone_fetches_the_large_files(tmp_path):
    weights = bytes(range(256)) * 40
    repo = make_lfs_repo(tmp_path / "opt_metaseq_tiny", {"model/reshard.pt": weights, "README.md": b"tiny"})
    dest = fetch.clone(f"file://{repo}", tmp_path / "clone")
    assert (dest / "model" / "reshard.pt").read_bytes() == weights


@needs_git_lfs
def test_clone_with_include_fetches_only_that_file(tmp_path):
    repo = make_lfs_repo(tmp_path / "r", {"model/reshard.pt": b"A" * 4096, "model/other.pt": b"B" * 4096})
    dest = fetch.clone(f"file://{repo}", tmp_path / "clone", include="model/reshard.pt")
    assert (dest / "model" / "reshard.pt").read_bytes() == b"A" * 4096
    assert fetch.is_lfs_pointer(dest / "model" / "other.pt")


@needs_git_lfs
def test_a_clone_without_lfs_files_gets_the_pull_command(tmp_path, monkeypatch):
    repo = make_lfs_repo(tmp_path / "r", {"model/reshard.pt": b"A" * 4096})
    monkeypatch.setenv("GIT_LFS_SKIP_SMUDGE", "1")  # what a clone without git-lfs set up leaves behind
    subprocess.run(["git", "clone", "-q", f"file://{repo}", str(tmp_path / "plain")], check=True)
    monkeypatch.delenv("GIT_LFS_SKIP_SMUDGE")
    with pytest.raises(ModelLoadError, match="git lfs pull"):
        fetch.checkpoint_source(str(tmp_path / "nothing-here" / "plain"), tmp_path)
    from helpers.metaseq import convert

    with pytest.raises(CheckpointError, match=r"Run `git lfs install && git lfs pull` in .*plain"):
        convert(tmp_path / "plain", tmp_path / "hf")


def test_missing_git_lfs_is_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "git_has_lfs", lambda: False)
    with pytest.raises(ModelLoadError, match="git-lfs is not installed"):
        fetch.clone("patrickvonplaten/opt_metaseq_350m", tmp_path / "x")


def test_clone_into_a_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("mine")
    if not fetch.git_has_lfs():
        pytest.skip("git-lfs is not installed")
    with pytest.raises(ModelLoadError, match="not empty"):
        fetch.clone("patrickvonplaten/opt_metaseq_350m", tmp_path / "x")


def test_checkpoint_source_prefers_local_paths(tmp_path):
    (tmp_path / "ckpt").mkdir()
    assert fetch.checkpoint_source(str(tmp_path / "ckpt"), tmp_path / "work") == tmp_path / "ckpt"


def test_download_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        fetch.download("patrickvonplaten/opt_metaseq_350m")


@pytest.mark.parametrize("spelling", ["{tmp}/no-such-checkpoint", "./no-such-checkpoint", "file://{tmp}/no-such",
                                      "no/such/checkpoint"])
def test_a_local_path_that_does_not_exist_is_named_not_cloned(tmp_path, monkeypatch, spelling):
    """Notebook 02's METASEQ_REPO as a missing local folder: "no such folder", not git's network and login advice."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fetch, "hub_reachable", lambda timeout=3.0: pytest.fail("a local path reached for the hub"))
    with pytest.raises(ModelLoadError, match="No such folder: .*(no-such|no/such/checkpoint)") as caught:
        fetch.checkpoint_source(spelling.format(tmp=tmp_path), tmp_path / "work", include="model/reshard.pt")
    assert "network" not in str(caught.value) and "login" not in str(caught.value)
    assert not (tmp_path / "work").exists()
    assert fetch.missing_local_path("patrickvonplaten/opt_metaseq_350m") is None  # a hub id stays a hub id
    assert fetch.missing_local_path("https://example.com/x.git") is None
