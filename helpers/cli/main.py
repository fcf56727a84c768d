"""The command line's parser and entry point."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from ..errors import HelpersError, out_of_memory_message, too_little_address_space
from .bench import add_bench_parser, add_leaks_parser
from .common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, UsageError
from .convert import add_convert_parser
from .finetune import add_finetune_parser
from .generate import add_generate_parser
from .plan import add_plan_parser
from .serve import add_serve_parser

# ---------------------------------------------------------------------------------------------- main

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_generate_parser, add_convert_parser, add_plan_parser, add_bench_parser,
                                                                    add_leaks_parser, add_serve_parser, add_finetune_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers",
        description="Generate text with Meta's OPT models, convert original metaseq checkpoints, plan memory, benchmark.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..signals import interrupts_never_dropped

    with interrupts_never_dropped():
        return _run_command(argv)


def _run_command(argv: Sequence[str] | None) -> int:
    if sys.stderr is None:  # started with its error output closed: messages go nowhere, but nothing fails
        sys.stderr = open(os.devnull, "w")
    if sys.stdout is None:
        print("error: standard output is closed, so the results would be lost. Run the command with its output "
              "going to a terminal, a file (> out.txt) or a pipe.", file=sys.stderr)
        return EXIT_ERROR
    from ..signals import interrupt_after

    try:
        with interrupt_after():  # the first seconds, when a Ctrl-C is likeliest
            parser = build_parser()
        args = parser.parse_args(argv)  # torch-free: --help answers at once
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    too_little = too_little_address_space()  # below it, torch's import can abort the process past any handler
    if too_little:
        print(f"error: {too_little}", file=sys.stderr)
        return EXIT_ERROR
    try:
        with interrupt_after():  # every command imports these (--help has answered without them): an interrupt
            import torch  # noqa: F401  inside their imports is held to the end, then ends the command cleanly
            import transformers  # noqa: F401
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    from ..signals import EXIT_TERMINATED, Terminated, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C, so temporary folders are removed
            return args.run(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HelpersError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Terminated:
        print("\nterminated (SIGTERM); temporary files removed", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as exc:  # the user gets one line, not a traceback from deep inside a library
        if os.environ.get("HELPERS_DEBUG"):
            raise
        ran_out = out_of_memory_message(exc)  # imports nothing: an import may be what ran out of memory
        if ran_out:
            print(f"error: {ran_out}", file=sys.stderr)
        else:
            print(f"error: {type(exc).__name__}: {exc}\n(set HELPERS_DEBUG=1 to see the traceback)", file=sys.stderr)
        return EXIT_ERROR
