"""Files written whole or not at all: a temporary name in the same folder, then a rename over the old file."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .errors import OutputWriteError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@contextlib.contextmanager
def replacing(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """A file to write `path`'s new contents into. It replaces `path` (in one rename, with the old file's
    permissions) only when the block ends without an error; on any error, a full disk included, the old file
    stays exactly as it was and the temporary file is removed. Missing parent folders are made."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.{secrets.token_hex(4)}.partial"
    try:
        # 0o666 less the umask, as open() makes a new file; an existing file's own permissions are copied below
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())  # on the disk before the rename, so a crash leaves the old or the new file
        if target.exists():
            shutil.copymode(target, temporary)
        os.replace(temporary, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = "The file that was there is unchanged. " if target.exists() else ""
            raise OutputWriteError(f"Could not write {path}: no space left on the disk that holds {target.parent} "
                                   f"({exc.strerror}). {kept}Free some space there, or write the results to another "
                                   "place.") from exc
        raise


def write_atomically(path: str | Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8, or bytes) to `path` whole, or leave the old file as it was."""
    with replacing(path, "wb" if isinstance(data, bytes) else "w") as file:
        file.write(data)


def save_figure(figure: Figure, path: str | Path, **savefig: object) -> None:
    """`figure.savefig(path, ...)` whole or not at all; the format is taken from `path`'s extension."""
    suffix = Path(path).suffix.lstrip(".").lower()
    with replacing(path, "wb") as file:
        figure.savefig(file, format=suffix or None, **savefig)

