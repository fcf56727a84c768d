"""Meta's published md5 sums of its OPT releases, and checking a download against them."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from ..units import human_bytes
from .progress import ProgressMeter, duration

_SUMS = Path(__file__).resolve().parents[1] / "data" / "release-md5"
_CHUNK = 8 * 1024**2


@dataclass(frozen=True)
class Release:
    """One of Meta's releases: its name, the csv of md5 sums metaseq publishes (projects/OPT/assets), and
    whether a conversion checks it on its own when a folder holds its files (OPT-66B's reshard-model_part-K.pt
    names are also what anyone's 8-part reshard is called, so only --verify checks against it)."""

    name: str
    sums_file: str
    checked_before_converting: bool

    def sums(self) -> dict[str, str]:
        with open(_SUMS / self.sums_file, newline="") as handle:
            return {row["shard"]: row["md5sum"].lower() for row in csv.DictReader(handle)}


RELEASES = (Release("OPT-175B", "opt175b_md5sum_shards.csv", True),
            Release("OPT-66B", "opt66b_md5sum_shards.csv", False))


@dataclass
class VerifyReport:
    """A download that matched Meta's sums."""

    folder: str
    release: str
    files: int
    bytes: int
    seconds: float
    reused: int  # sums taken from the cache of earlier checks (same size and modification time)

    def summary(self) -> str:
        again = f", {self.reused} from an earlier check" if self.reused else ""
        return (f"{self.folder}: all {self.files} files of Meta's {self.release} release match its md5 sums "
                f"({human_bytes(self.bytes)} in {duration(self.seconds)}{again}).")


def recognise(names: set[str]) -> Release | None:
    """The release a conversion checks first, when most of its file names are among `names`."""
    for release in RELEASES:
        if release.checked_before_converting and len(names & set(release.sums())) * 2 > len(release.sums()):
            return release
    return None


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "opt-notebooks" / "verified-md5.json"


def _read_cache() -> dict:
    try:
        cache = json.loads(_cache_file().read_text())
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict) -> None:
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, path)
    except OSError:
        pass  # only a cache: the next check hashes again


def _stamp(path: Path) -> list:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def file_md5(path: Path, advance: Callable[[int], None]) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)  # releases the GIL: the threads hash in parallel
            advance(len(chunk))
    return digest.hexdigest()


def _listed(names: list[str], more: str) -> str:
    shown = ", ".join(names[:8])
    return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "") + more


def verify_release(folder: str | Path, release: Release | None = None, workers: int | None = None,
                   progress: Callable[[str], None] = lambda line: None) -> VerifyReport:
    """Check every file of a download of one of Meta's releases against its published md5 sums, several
    files at once, with progress. The release is the one whose file names `folder` holds most of.

    Raises:
        CheckpointError: not a folder, none of its files is in a release, or files missing, extra or
            corrupt (all named, with what to do).
    """
    import time

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder: pass the folder that holds the downloaded release files.")
    present = {p.name for p in folder.iterdir() if p.is_file() and p.suffix == ".pt"}
    if release is None:
        release = max(RELEASES, key=lambda r: len(present & set(r.sums())))
    sums = release.sums()
    if not present & set(sums):
        known = "; ".join(f"{r.name}: {len(r.sums())} files such as {min(r.sums())}" for r in RELEASES)
        raise CheckpointError(f"{folder} holds none of the files of Meta's releases whose md5 sums are known ({known}). "
                              "Pass the folder the release was downloaded to.")
    missing = sorted(set(sums) - present, key=_natural)
    extra = sorted(present - set(sums), key=_natural)
    checked = sorted(present & set(sums), key=_natural)
    paths = [folder / name for name in checked]
    cache, reused = _read_cache(), 0
    todo = []
    results: dict[str, str] = {}
    for path in paths:
        entry = cache.get(str(path.resolve()))
        if isinstance(entry, dict) and entry.get("stamp") == _stamp(path) and entry.get("md5") == sums[path.name]:
            results[path.name] = entry["md5"]
            reused += 1
        else:
            todo.append(path)
    total = sum(p.stat().st_size for p in todo)
    meter = ProgressMeter(f"md5 of {len(todo)} files", total, progress)
    started = time.monotonic()
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, digest in zip(todo, pool.map(lambda p: file_md5(p, meter.advance), todo)):
            results[path.name] = digest
    corrupt = [name for name in checked if results[name] != sums[name]]
    for path in paths:
        if results[path.name] == sums[path.name]:
            cache[str(path.resolve())] = {"stamp": _stamp(path), "md5": results[path.name]}
    _write_cache(cache)
    if missing or extra or corrupt:
        problems = []
        if missing:
            problems.append(f"missing: {_listed(missing, '')}")
        if corrupt:
            problems.append(f"corrupt (md5 differs from Meta's): {_listed(corrupt, '')}")
        if extra:
            problems.append(f"not part of the release: {_listed(extra, '')}")
        fix = []
        if missing or corrupt:
            fix.append("download the missing and corrupt files again from Meta's link")
        if extra:
            fix.append("move the files that are not part of the release out of the folder")
        raise CheckpointError(
            f"{folder} is not a complete, intact copy of Meta's {release.name} release ({len(sums)} files): "
            f"{'; '.join(problems)}. To fix: {' and '.join(fix)}, then check again with "
            f"python -m helpers convert-metaseq --verify {folder}"
        )
    return VerifyReport(folder=str(folder), release=release.name, files=len(checked),
                        bytes=sum(p.stat().st_size for p in paths), seconds=time.monotonic() - started, reused=reused)


def _natural(name: str) -> list:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
