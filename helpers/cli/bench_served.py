"""`python -m helpers bench --model URL`: a served model's speed against the requests in flight (--batch)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import check_outputs

SERIES = (("rows", "served (this client)", "o-"), ("raw_rows", "served (raw httpx loop)", "^:"),
          ("local_rows", "loaded here (batched)", "s--"))


def run_served_bench(args: argparse.Namespace, levels: list[int]) -> int:
    """The concurrency sweep (`--batch 1,2,4,...,32`: requests in flight), as a table, JSON and a plot."""
    check_outputs((args.json, "--json", False), (args.plot, "--plot", True))
    from ..analysis.served_bench import served_benchmark
    from ..analysis.tables import text_table

    report = served_benchmark(args.model, levels, args.prompt_tokens, args.new_tokens, local=args.local,
                              device=args.device, dtype=args.dtype,
                              progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"{report['model']} at {report['server']}: {args.prompt_tokens} prompt and {args.new_tokens} new tokens a "
          "request" + (f"; loaded here from {report['local']}" if report["local"] else ""))
    table = []
    for key, label, _ in SERIES:
        table += [{"what": label, "in flight": r["concurrency"], "requests": r["requests"],
                   "tokens/s in all": f"{r['aggregate_tokens_per_second']:.1f}",
                   "tokens/s per stream": f"{r['tokens_per_second_per_stream']:.1f}",
                   "first token (s)": f"{r['time_to_first_token']:.3f}"} for r in report[key]]
    print(text_table(table))
    print("this client's overhead: " + ", ".join(
        f"{o['concurrency']} at once {1000 * o['seconds_per_request']:+.1f} ms a request "
        f"({100 * o['aggregate_ratio']:.0f}% of the raw loop's tokens/s)" for o in report["client_overhead"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        _plot(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _plot(report: dict, path: str) -> None:
    """Tokens/s in all (left) and per stream (right) against the requests in flight, one line a series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, figure, title in ((axes[0], "aggregate_tokens_per_second", "all streams together"),
                              (axes[1], "tokens_per_second_per_stream", "one stream")):
        for key, label, style in SERIES:
            if report[key]:
                ax.plot([r["concurrency"] for r in report[key]], [r[figure] for r in report[key]], style, label=label)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="requests in flight (loaded here: batch size)", ylabel="tokens / s", title=title)
    axes[0].legend()
    fig.suptitle(f"{report['model']} served at {report['server']}", fontsize=9)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
