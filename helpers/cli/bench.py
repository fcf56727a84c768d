"""`python -m helpers bench` and `leaks`."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap

from ..analysis.bench_rows import OLD_NAMES, ROWS, help_lines, row_name
from ..files import save_figure, write_atomically
from ..memory.dtype_names import DTYPE_CHOICES
from .common import UsageError, check_outputs, quiet_libraries

# ---------------------------------------------------------------------------------------------- bench

def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure decoding speed, memory and roofline fraction of each method",
        description=textwrap.fill(
            "Time each decoding method (backend) on one model (random weights in a real OPT shape, or a folder) in one run: "
            "time to first token, decode tokens/s, peak memory, and the fraction of the memory-bandwidth roofline "
            "(the bandwidth is measured in the same run). Quantized methods also report their quality cost "
            "against the unquantized model. Where ctranslate2 is installed, CTranslate2 (a peer, not ours) runs the same "
            "weights converted from the same folder (cached), in float32 and int8.", width=min(shutil.get_terminal_size().columns - 2, 100)),
        epilog="methods (a backend; quantized: backend+plan):\n" + help_lines(),  # torch-free: --help stays quick
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the methods one a line; the description wrapped here
    )
    p.add_argument("--model", default="opt-125m", metavar="SIZE_OR_PATH",
                   help="an OPT size (random weights in its shape; default opt-125m), a local model folder, or a "
                        "server URL (--batch 1,2,...,32: requests in flight)")
    p.add_argument("--local", metavar="FOLDER", help="with a server URL: the same weights loaded here, for rows beside "
                   "the server's (default: the served model's folder, where this machine can read it)")
    p.add_argument("--device", default="auto", metavar="D", help="auto (default), cpu, cuda")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="auto: float16 on a GPU, float32 on the CPU")
    p.add_argument("--batch", default="1", metavar="B[,B...]", help="batch size(s), e.g. 1,2,4,8 for a sweep")
    p.add_argument("--prompt-tokens", type=int, default=10, metavar="N")
    p.add_argument("--new-tokens", type=int, default=128, metavar="N")
    p.add_argument("--methods", metavar="M1,M2",
                   help=f"comma-separated, from: {', '.join(ROWS)} (default: all that run on the device)")
    p.add_argument("--repeats", type=int, default=3, metavar="R", help="timed runs per method (the median is kept); on the CPU the methods take turns, one run each a round")
    p.add_argument("--json", metavar="FILE", help="write the results with hardware and version facts to FILE")
    p.add_argument("--plot", metavar="FILE.png", help="draw the results to FILE.png")
    p.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from ..serving.urls import is_server_url

    methods = _methods(args.methods)
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        raise UsageError(f"--batch takes whole numbers separated by commas, not {args.batch!r}") from None
    for flag, value in (("--batch", min(batches)), ("--prompt-tokens", args.prompt_tokens),
                        ("--new-tokens", args.new_tokens), ("--repeats", args.repeats)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1")
    if is_server_url(args.model):  # a served model: --batch is the requests in flight
        from .bench_served import run_served_bench

        return run_served_bench(args, batches)
    check_outputs((args.json, "--json", False), (args.plot, "--plot", True))
    quiet_libraries()
    from ..analysis.benchmark import run_suite
    from ..analysis.tables import text_table

    report = run_suite(args.model, methods, device=args.device, dtype=args.dtype, batches=batches,
                       prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, repeats=args.repeats,
                       progress=lambda line: print(line, file=sys.stderr, flush=True))
    bw = report.bandwidth
    print(f"{report.model}: {report.parameters / 1e6:.1f}M parameters, {report.dtype} on {report.device}; "
          f"measured bandwidth {bw['bytes_per_second'] / 1e9:.1f} GB/s ({bw['used']})")
    print(text_table(report.table()))
    if args.json:
        report.write(args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        from ..analysis.plots import benchmark_figure

        save_figure(benchmark_figure(report.as_dict()), args.plot, dpi=120, bbox_inches="tight")
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _methods(flag: str | None) -> list[str] | None:
    """--methods' rows under their current names (the old ones still taken, with a note on stderr)."""
    if not flag:
        return None
    methods = []
    for name in (m.strip() for m in flag.split(",") if m.strip()):
        if name in OLD_NAMES:
            print(f"note: '{name}' is now called '{row_name(name)}' (the old name is deprecated)", file=sys.stderr)
        methods.append(row_name(name))
    unknown = [m for m in methods if m not in ROWS]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    return methods


# ---------------------------------------------------------------------------------------------- leaks

def add_leaks_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leaks",
        help="load, generate and unload a model many times and record the memory left behind",
        description="Load, generate (to the end, and streamed then stopped; every third cycle with a fault "
                    "injected mid-stream) and unload a model CYCLES times; record resident memory, CUDA memory "
                    "still allocated and live threads after each unload.",
    )
    p.add_argument("--model", required=True, metavar="SIZE_OR_PATH", help="a model folder, or a size (random weights)")
    p.add_argument("--cycles", type=int, default=20, metavar="N")
    p.add_argument("--device", default="auto", metavar="D")
    p.add_argument("--out", metavar="FILE", help="write the figures as JSON to FILE")
    p.set_defaults(run=_run_leaks)


def _run_leaks(args: argparse.Namespace) -> int:
    if args.cycles < 2:
        raise UsageError("--cycles must be at least 2 (growth is measured from the first cycle on)")
    check_outputs((args.out, "--out", False))
    quiet_libraries()
    from ..units import human_bytes
    from .project_tools import project_tool

    leak_check = project_tool("leaks", "leaks").leak_check
    result = leak_check(args.model, args.cycles, device=args.device,
                        progress=lambda line: print(line, file=sys.stderr, flush=True))
    cuda = result["cuda_allocated_bytes_after_each"][-1]
    print(f"{args.cycles} cycles of {result['model']}: resident memory grew {human_bytes(result['resident_growth_bytes'])} "
          f"in all ({human_bytes(result['resident_growth_after_first_bytes'])} after the first cycle); CUDA memory "
          f"left allocated {human_bytes(cuda)}; threads alive {result['threads_after_each'][0]} -> "
          f"{result['threads_after_each'][-1]}; {result['faults_injected']} injected faults surfaced")
    if args.out:
        write_atomically(args.out, json.dumps(result, indent=2) + "\n")
    return 0
