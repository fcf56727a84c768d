"""What every subcommand shares: usage errors, exit codes, JSON output, output paths checked first."""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Flags that cannot go together; reported like argparse's own errors."""


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def stdout_takes_unicode() -> bool:
    """Whether standard output's encoding can write any text (PYTHONIOENCODING=ascii, a latin-1 terminal cannot)."""
    try:
        "é€😀".encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def print_json(data: dict) -> None:
    json.dump(data, sys.stdout, ensure_ascii=not stdout_takes_unicode(), indent=2)  # \u escapes are still exact JSON
    sys.stdout.write("\n")


def memory_flags(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """--gpu-memory and --cpu-memory in bytes, checked before anything loads."""
    from ..memory.bytes import parse_bytes

    try:
        return tuple(parse_bytes(v) if v else None for v in (args.gpu_memory, args.cpu_memory))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_outputs(*outputs: tuple[str | None, str, bool]) -> None:
    """(path, flag, is a figure) for each file the command will write: checked before the work starts."""
    from .outputs import check_output_file

    for path, flag, figure in outputs:
        if path:
            try:
                check_output_file(path, flag, figure)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
