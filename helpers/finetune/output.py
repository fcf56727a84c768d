"""The output folder of a fine-tuning run: checked first, marked as ours, others' files never touched."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from ..errors import OutputWriteError

TOOL = "helpers finetune"
MARK = "finetune.json"  # the run's settings and figures, and the mark that a folder is a fine-tuning output
CHECKPOINTS = "checkpoints"
MERGED = "merged"
PARTIAL = ".partial-"  # a save under way: moved into the folder when whole
# What a run writes: peft's adapter files (save_pretrained writes a README.md model card beside them).
OURS = {MARK, CHECKPOINTS, MERGED, "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin",
        "README.md"}


def is_ours(folder: Path) -> bool:
    try:
        return json.loads((folder / MARK).read_text()).get("written_by") == TOOL
    except (OSError, ValueError, AttributeError):
        return False


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` in out/checkpoints (None where there is none)."""
    found = [(int(p.name.split("-")[1]), p) for p in (folder / CHECKPOINTS).glob("checkpoint-*")
             if p.is_dir() and p.name.split("-")[1].isdigit()]
    return max(found)[1] if found else None


def check_output(out: Path, resume: bool) -> None:
    """Refuse, before anything loads, a file, a folder holding files a run did not write (the converter's rule:
    never deleted, never mixed in), or an earlier run's folder without `resume`."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise OutputWriteError(f"{out} exists and is not a folder: choose a new folder for the adapter. Nothing was "
                               "changed.")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    foreign = [name for name in entries if name not in OURS and not name.startswith(PARTIAL)] if is_ours(out) \
        else entries
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise OutputWriteError(f"{out} already holds other files ({shown}): choose a new folder for the adapter "
                               "(it is never written into a folder of other files). Nothing was changed.")
    for leftover in out.glob(f"{PARTIAL}*"):  # a save cut short by a crash (a kill, a lost runtime)
        shutil.rmtree(leftover, ignore_errors=True)
    if not resume:
        raise OutputWriteError(f"{out} holds an earlier fine-tuning run: pass --resume (resume=True) to go on from "
                               "its last checkpoint, or choose another folder. Nothing was changed.")


def disk_full_message(exc: OSError, where: Path) -> str | None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"Could not save to {where}: no space left on the disk that holds it ({exc.strerror or exc}). What "
                "was saved before is unchanged. Free some space there (old checkpoints in "
                f"{where / CHECKPOINTS} can go), or write the adapter to another place, and run again with --resume.")
    return None


def save_whole(save: Callable[[Path], None], out: Path, names: tuple[str, ...] | None = None) -> None:
    """Run `save(folder)` into a new folder beside the files of `out`, then move what it wrote into `out` (one
    rename each): a failed save (a full disk) leaves the files that were there as they were."""
    partial = out / f"{PARTIAL}{uuid.uuid4().hex[:8]}"
    try:
        partial.mkdir(parents=True)
        save(partial)
        for item in sorted(partial.iterdir()):
            if names is None or item.name in names:
                target = out / item.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(item, target)
    except OSError as exc:
        message = disk_full_message(exc, out)
        if message is None:
            raise OutputWriteError(f"Could not save to {out} ({exc.strerror or exc}): choose a folder you can "
                                   "write to.") from exc
        raise OutputWriteError(message) from exc
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(partial)


def write_mark(out: Path, facts: dict) -> None:
    from ..files import write_atomically

    write_atomically(out / MARK, json.dumps({"written_by": TOOL, **facts}, indent=2) + "\n")
