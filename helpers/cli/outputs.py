"""Where a command will write its results, checked before the work that produces them starts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def check_output_file(path: str, flag: str, figure: bool = False) -> None:
    """Raise ValueError saying what to change if `path` cannot be written as a file: an existing folder,
    a place without write permission, or (a figure) a format matplotlib cannot draw."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name in it instead, e.g. {flag} "
                         f"{target / ('results.png' if figure else 'results.json')}.")
    if figure:
        from matplotlib.figure import Figure

        formats = Figure().canvas.get_supported_filetypes()
        suffix = target.suffix.lstrip(".").lower()
        if suffix not in formats:
            raise ValueError(f"{flag} {path}: matplotlib cannot draw '{target.suffix or 'no extension'}'; end the "
                             f"name with one of {', '.join('.' + f for f in sorted(formats))}.")
    existing = target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:  # the one sure test (permissions, read-only mounts, root): make a file there
        if not existing.is_dir():
            raise NotADirectoryError(existing)
        tempfile.TemporaryFile(dir=existing).close()
    except OSError:
        raise ValueError(f"{flag} {path} cannot be written: {existing} is not a folder this user may write to. "
                         "Pick another place.") from None
    if target.exists() and not os.access(target, os.W_OK):
        raise ValueError(f"{flag} {path} exists and may not be overwritten by this user. Pick another name.")
