"""Getting model repositories: a git-lfs clone (as the tutorial did) or a hub download, LFS pointers caught."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from ..errors import CheckpointError, ModelLoadError

LFS_POINTER_PREFIX = b"version https://git-lfs"
HUB_URL = "https://huggingface.co"


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within `timeout` seconds (not a full request): a quick
    check that spares the user the hub client's minute of retries when there is no network."""
    url = urlparse(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def offline_message(repo_id: str, why: str) -> str:
    return (
        f"Could not get '{repo_id}' from the Hugging Face Hub: {why}, and it is not in the local cache. "
        "To use a model without the hub, download its folder on a machine with a connection "
        f"(`hf download {repo_id} --local-dir opt-folder`, or `git lfs install && git clone "
        f"https://huggingface.co/{repo_id} opt-folder`), copy it here and pass the folder: "
        "load_model('path/to/opt-folder'), or `python -m helpers generate --model path/to/opt-folder ...`."
    )


def is_lfs_pointer(path: str | Path) -> bool:
    """True for a small text file standing in for a large one that `git lfs` did not fetch."""
    path = Path(path)
    try:
        if path.stat().st_size > 1024:
            return False
        with open(path, "rb") as handle:
            return handle.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except OSError:
        return False


def lfs_pull_hint(path: str | Path) -> str:
    """The sentence telling the user how to fetch the real file behind a pointer."""
    path = Path(path).resolve()
    top = next((p for p in [path.parent, *path.parents] if (p / ".git").exists()), path.parent)
    return (f"{path} is a Git LFS pointer, not the file itself: the clone did not fetch large files. "
            f"Run `git lfs install && git lfs pull` in {top}.")


def check_not_lfs_pointer(path: str | Path) -> None:
    if is_lfs_pointer(path):
        raise CheckpointError(lfs_pull_hint(path))


def find_lfs_pointers(folder: str | Path) -> list[Path]:
    """Every file under `folder` (outside .git) that is still an LFS pointer."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.parts and is_lfs_pointer(p))


def missing_local_path(repo: str) -> Path | None:
    """The path `repo` names when it is written as a local path (`/...`, `./...`, `~/...`, `file://...`, or more
    parts than a hub id's owner/name) and nothing is there; None for an existing path, a hub id or a URL."""
    if repo.startswith("file://"):
        path = Path(urlparse(repo).path)
    elif "://" in repo or repo.startswith("git@"):
        return None
    elif repo.startswith(("/", ".", "~")) or "\\" in repo or repo.rstrip("/").count("/") > 1:
        path = Path(repo).expanduser()
    else:
        return None
    return None if path.exists() else path


def git_has_lfs() -> bool:
    if shutil.which("git") is None:
        return False
    return subprocess.run(["git", "lfs", "version"], capture_output=True).returncode == 0


def clone(repo: str, dest: str | Path, *, include: str | None = None) -> Path:
    """Clone a model repository with its large files, as the 2022 tutorial did (`git lfs install; git clone ...`).

    Args:
        repo: a hub repo id (`patrickvonplaten/opt_metaseq_350m`) or any git URL (https://, file://, a path).
        dest: the folder to clone into (must not exist yet, or be empty).
        include: fetch only the LFS files matching this pattern (e.g. "model/reshard.pt"); others stay pointers.

    Returns:
        The clone's folder.

    Raises:
        ModelLoadError: git or git-lfs is missing, the clone failed, or large files are still pointers.
    """
    dest = Path(dest)
    missing = missing_local_path(repo)
    if missing is not None:
        raise ModelLoadError(f"No such folder: {missing}. '{repo}' is a local path and nothing is there: check the "
                             "path, or give a hub repo id (owner/name) or a git URL.")
    if shutil.which("git") is None:
        raise ModelLoadError("git is not installed. Install it (`apt-get install git`) or use fetch.download(...).")
    if not git_has_lfs():
        raise ModelLoadError(
            "git-lfs is not installed, so a clone would hold pointer files instead of the weights. Install it "
            "(`apt-get install git-lfs`, or `brew install git-lfs`), or use helpers.loading.fetch.download(...), which needs no git."
        )
    if dest.exists() and any(dest.iterdir()):
        raise ModelLoadError(f"{dest} already exists and is not empty: pick another folder or remove it.")
    on_hub = not ("://" in repo or repo.startswith(("/", ".", "~")) or repo.endswith(".git"))
    url = f"{HUB_URL}/{repo}" if on_hub else repo
    if on_hub and hub_offline():
        raise ModelLoadError(offline_message(repo, "the hub is switched off here (HF_HUB_OFFLINE is set)"))
    if on_hub and not hub_reachable():
        raise ModelLoadError(offline_message(repo, f"{hub_endpoint()} cannot be reached (no network?)"))
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    if include:
        env["GIT_LFS_SKIP_SMUDGE"] = "1"
    subprocess.run(["git", "lfs", "install", "--skip-repo"], check=True, capture_output=True)
    done = subprocess.run(["git", "clone", "--progress", url, str(dest)], env=env)
    if done.returncode != 0:
        raise ModelLoadError(
            f"`git clone {url}` failed (exit {done.returncode}; git printed why above). Check the name and your "
            "network; for a gated or private repository log in first (`hf auth login`)."
        )
    if include:
        pulled = subprocess.run(["git", "lfs", "pull", "--include", include], cwd=dest)
        if pulled.returncode != 0:
            raise ModelLoadError(f"`git lfs pull --include {include}` failed in {dest} (exit {pulled.returncode}).")
    pointers = [p for p in find_lfs_pointers(dest) if not include or p.match(include)]
    if pointers:
        raise ModelLoadError(lfs_pull_hint(pointers[0]))
    return dest


def download(repo_id: str, dest: str | Path | None = None, *, allow_patterns: list[str] | None = None,
             revision: str | None = None) -> Path:
    """Download a hub repository (or the files matching `allow_patterns`) with progress bars, no git needed.

    Returns the local folder (`dest`, or the hub cache's snapshot folder).
    """
    from huggingface_hub import snapshot_download

    if hub_offline():
        raise ModelLoadError(offline_message(repo_id, "the hub is switched off here (HF_HUB_OFFLINE is set)"))
    if not hub_reachable():
        raise ModelLoadError(offline_message(repo_id, "the hub cannot be reached (no network?)"))
    try:
        folder = snapshot_download(repo_id, local_dir=str(dest) if dest else None, allow_patterns=allow_patterns,
                                   revision=revision)
    except Exception as exc:  # the hub client's errors differ between versions
        raise ModelLoadError(offline_message(repo_id, f"the download failed ({exc})")) from None
    return Path(folder)


def checkpoint_source(repo_or_path: str, workdir: str | Path, *, include: str | None = None) -> Path:
    """A local path for a checkpoint: `repo_or_path` itself if it exists, an earlier complete clone in
    `workdir`, or a fresh git-lfs clone of it (fetching only `include` when given)."""
    local = Path(repo_or_path).expanduser()
    if local.exists():
        return local
    dest = Path(workdir).expanduser() / repo_or_path.rstrip("/").removesuffix(".git").split("/")[-1]
    if dest.is_dir() and any(dest.iterdir()):
        wanted = [p for p in find_lfs_pointers(dest) if not include or p.match(include)]
        if not wanted:
            return dest
        raise ModelLoadError(lfs_pull_hint(wanted[0]))
    return clone(repo_or_path, dest, include=include)
