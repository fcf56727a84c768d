"""`python -m helpers bench --model URL`: a served model's speed against the requests in flight (--batch)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import check_outputs


def run_served_bench(args: argparse.Namespace, levels: list[int]) -> int:
    """The concurrency sweep (`--batch 1,2,4,...,32`: requests in flight), as a table, JSON and a plot."""
    check_outputs((args.json, "--json", False), (args.plot, "--plot", True))
    from ..analysis.served_bench import served_benchmark
    from ..analysis.tables import text_table

    report = served_benchmark(args.model, levels, args.prompt_tokens, args.new_tokens,
                              progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"{report['model']} at {report['server']}: {args.prompt_tokens} prompt and {args.new_tokens} new tokens a "
          "request")
    print(text_table([{"in flight": r["concurrency"], "requests": r["requests"],
                       "tokens/s in all": f"{r['aggregate_tokens_per_second']:.1f}",
                       "tokens/s per stream": f"{r['tokens_per_second_per_stream']:.1f}",
                       "first token (s)": f"{r['time_to_first_token']:.3f}"} for r in report["rows"]]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        levels = [r["concurrency"] for r in report["rows"]]
        ax.plot(levels, [r["aggregate_tokens_per_second"] for r in report["rows"]], "o-", label="all streams")
        ax.plot(levels, [r["tokens_per_second_per_stream"] for r in report["rows"]], "s--", label="one stream")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="requests in flight", ylabel="tokens / s", title=f"{report['model']} served")
        ax.legend()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
