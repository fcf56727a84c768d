"""Where a conversion writes: checked, claimed while converting, published at the end, never others' files."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import CheckpointError

TOOL = "helpers convert-metaseq"
REPORT = "conversion.json"  # the report, and the mark that a folder is a conversion's output
CLAIM = ".helpers-partial.json"  # inside a partial output: which process is writing it
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|replaced)-[0-9a-f]{8}$")


def check_destination(dst: Path, src: Path, sources: list[Path], overwrite: bool) -> None:
    """Refuse, before anything is read or written, a destination that is the source, inside or above it,
    the current folder, a file, or a folder holding anything but an earlier conversion (that only with
    --overwrite)."""
    target, cwd = dst.resolve(), Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise CheckpointError(f"{dst} is the current folder{'' if target == cwd else ' or holds it'}: name a new "
                              "folder for the converted model, e.g. opt-converted. Nothing was changed.")
    source_dir = src.expanduser().resolve()
    for path in [source_dir, *(p.resolve() for p in sources)]:
        if target == path or target in path.parents:
            what = "the source" if target == path else f"a folder holding the source ({path})"
            raise CheckpointError(f"{dst} is {what}: the converted model needs a folder of its own, outside the "
                                  "checkpoint's (e.g. opt-converted beside it). Nothing was changed.")
    if source_dir.is_dir() and source_dir in target.parents:
        raise CheckpointError(f"{dst} is inside the source folder {src}: the converted model needs a folder of its "
                              "own, outside the checkpoint's (e.g. opt-converted beside it). Nothing was changed.")
    _check_in_the_way(dst, target, overwrite)


def _check_in_the_way(dst: Path, target: Path, overwrite: bool) -> None:
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir():
        raise CheckpointError(f"{dst} exists and is not a folder: choose another name for the converted model. "
                              "Nothing was changed.")
    if not any(target.iterdir()):
        return
    foreign = foreign_entries(target)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        if overwrite:
            raise CheckpointError(
                f"{dst} holds files that convert-metaseq did not write ({shown}), and --overwrite replaces only an "
                "earlier conversion's output, so nothing was deleted. Choose another folder, or move those files "
                "away yourself."
            )
        raise CheckpointError(f"{dst} already exists and holds other files ({shown}): choose a new folder for the "
                              "converted model. Nothing was changed.")
    if not overwrite:
        raise CheckpointError(f"{dst} holds an earlier conversion: pass --overwrite to replace it, or choose "
                              "another folder.")


def foreign_entries(folder: Path) -> list[str]:
    """What in `folder` no conversion wrote: everything, unless its conversion.json marks it as one's output,
    then whatever is there besides the files that conversion listed."""
    names = sorted(p.name for p in folder.iterdir())
    try:
        report = json.loads((folder / REPORT).read_text())
        written = set(report["files_written"]) if report.get("written_by") == TOOL else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        written = None
    if written is None:
        return names
    return [n for n in names if (n not in written and n != CLAIM) or not (folder / n).is_file()]


def mark_as_output(folder: Path, report: dict) -> None:
    """Write conversion.json: the report, and the list of files this conversion wrote (what --overwrite
    may replace later)."""
    written = sorted(p.name for p in folder.iterdir() if p.name != CLAIM) + [REPORT]
    (folder / REPORT).write_text(json.dumps({**report, "written_by": TOOL, "files_written": written}, indent=2) + "\n")


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on `folder` among conversions (flock; where the file system has none, no lock)."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _me() -> dict:
    import psutil

    return {"pid": os.getpid(), "host": socket.gethostname(), "started": psutil.Process().create_time()}


def _alive(claim: dict) -> bool | None:
    """Whether the process that wrote `claim` still runs (None: it ran on another machine)."""
    import psutil

    if claim.get("stopped"):
        return False
    if claim.get("host") != socket.gethostname():
        return None
    try:
        return abs(psutil.Process(int(claim["pid"])).create_time() - float(claim["started"])) < 1.0
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def _read_claim(folder: Path) -> dict | None:
    try:
        claim = json.loads((folder / CLAIM).read_text())
        return claim if isinstance(claim, dict) else None
    except (OSError, ValueError):
        return None


def _clean_leftovers(parent: Path, dst: Path, say: Callable[[str], None],
                     resumable: Callable[[Path], bool] | None = None) -> Path | None:
    """Remove the partial outputs of conversions that were killed (their process is gone), put back an
    output an interrupted --overwrite had moved aside; refuse while another conversion to `dst` runs.
    Returns the killed conversion to `dst` that `resumable` accepts (kept, to go on with), if any."""
    resumed = None
    for entry in sorted(parent.iterdir()):
        match = _LEFTOVER.match(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        if match["kind"] == "replaced":  # only ever there during a publish, which holds the lock we hold
            if foreign_entries(entry):
                continue
            original = parent / match["name"]
            if not original.exists():
                os.rename(entry, original)
                say(f"Put back {original}, which an interrupted --overwrite had moved aside.")
            else:
                shutil.rmtree(entry)
                say(f"Removed {entry}, an earlier conversion an interrupted --overwrite was replacing.")
            continue
        claim = _read_claim(entry)
        if claim is None and (entry / CLAIM).is_file():
            # Claims are written under the lock we hold: an unreadable one is a conversion that failed as it
            # started (a full disk), not one at work.
            shutil.rmtree(entry)
            say(f"Removed {entry}, left by a conversion that failed as it started (a full disk?).")
            continue
        if claim is None:
            if not any(entry.iterdir()):
                entry.rmdir()
            elif match["name"] == dst.name:
                say(f"{entry} looks like the leftover of an interrupted conversion, but it is not marked as one of "
                    f"this version's, so it was kept: remove it (rm -r {entry}) if no conversion is running.")
            continue
        alive = _alive(claim)
        mine = Path(claim.get("destination", "")) == dst
        if alive is False and resumed is None and mine and resumable is not None and resumable(entry):
            resumed = entry
        elif alive is False:
            shutil.rmtree(entry)
            say(f"Removed {entry}, the partial output of a conversion that was killed (process {claim.get('pid')}) "
                "before it finished.")
        elif alive and mine:
            raise CheckpointError(f"Another conversion to {dst} is running (process {claim.get('pid')}): wait for "
                                  "it to finish, or choose another folder. Nothing was changed.")
    return resumed


def claim(dst: Path, say: Callable[[str], None], resumable: Callable[[Path], bool] | None = None) -> Path:
    """Clean up leftovers beside `dst`, then create this conversion's partial output folder, marked with
    this process, beside `dst` (so the final rename stays on one file system). With `resumable`: the partial
    output of a killed conversion to `dst` that it accepts is taken over instead (marked with this process)."""
    target = dst.resolve()
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked(target.parent):
            tmp = _clean_leftovers(target.parent, target, say, resumable)
            if tmp is None:
                tmp = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
                tmp.mkdir()
            partial = tmp / f"{CLAIM}.tmp"
            partial.write_text(json.dumps({**_me(), "destination": str(target)}))
            os.replace(partial, tmp / CLAIM)
    except OSError as exc:
        if tmp is not None and (resumable is None or not (tmp / CLAIM).is_file()):
            shutil.rmtree(tmp, ignore_errors=True)  # ours, and nothing in it yet: a full disk leaves nothing
        raise CheckpointError(f"Cannot write the converted model beside {dst} ({exc.strerror or exc}): choose a "
                              "folder you can write to (with free space).") from None
    return tmp


def set_aside(tmp: Path) -> None:
    """Mark a partial output as no longer worked on (its conversion stopped, to be resumed by the next run,
    even one in this same process: a notebook's kernel after an interrupt)."""
    with contextlib.suppress(OSError, ValueError):
        claim = json.loads((tmp / CLAIM).read_text())
        partial = tmp / f"{CLAIM}.tmp"
        partial.write_text(json.dumps({**claim, "stopped": True}))
        os.replace(partial, tmp / CLAIM)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done (a few renames), then act as they would have."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])


def publish(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Rename the finished `tmp` to `dst`. An earlier conversion there is replaced only with --overwrite;
    anything else found there now (it appeared during the run) is left alone and the result kept beside it.

    Raises:
        CheckpointError: `dst` appeared during the run; the message says where the result is.
    """
    target = dst.resolve()
    with _locked(target.parent), _signals_deferred():
        try:
            if target.is_dir() and any(target.iterdir()):
                if foreign_entries(target) or not overwrite:
                    raise FileExistsError
                aside = target.parent / f".{target.name}.replaced-{uuid.uuid4().hex[:8]}"
                os.rename(target, aside)
                os.rename(tmp, target)
                shutil.rmtree(aside)
            else:
                os.rename(tmp, target)  # replaces an empty folder; fails on anything else
        except OSError:
            kept = target.parent / f"{target.name}-converted-{uuid.uuid4().hex[:8]}"
            os.rename(tmp, kept)
            (kept / CLAIM).unlink(missing_ok=True)
            raise CheckpointError(
                f"{dst} appeared while converting (another program or conversion wrote it) and was left as it is. "
                f"The converted model is complete in {kept}: move it where you want it."
            ) from None
        (target / CLAIM).unlink(missing_ok=True)
