"""matplotlib figures made from results (benchmark JSON, comparison rows) for the notebooks and the README."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ..units import human_count
from .bench_rows import with_current_names


def _ran(results: list[dict]) -> list[dict]:
    return [r for r in results if not r.get("skipped")]


def benchmark_figure(report: dict) -> Figure:
    """Decode speed per method against the roofline, and (for a batch sweep) throughput against batch
    size, or else peak memory per method (rows under older names renamed)."""
    results = _ran(with_current_names(report)["results"])
    batches = sorted({r["batch"] for r in results})
    first = [r for r in results if r["batch"] == batches[0]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    names = [r["method"] + (" (peer)" if r.get("peer") else "") for r in first]
    speeds = [r["decode_tokens_per_second"] or 0 for r in first]
    # ours unquantized blue, ours quantized orange, a peer (another library, not ours) green
    colors = ["#3a9a5b" if r.get("peer") else "#3b7dd8" if r["quality"] is None else "#e08a2c" for r in first]
    bars = left.barh(names, speeds, color=colors)
    bandwidth = report["bandwidth"]["bytes_per_second"]
    unquantized = next((r for r in first if r["quality"] is None), None)
    limit = 0.0
    if unquantized is not None:
        limit = bandwidth / unquantized["bytes_per_step"]
        left.axvline(limit, color="#b00020", linestyle="--", linewidth=1)
        left.text(limit, -0.7, f" roofline {limit:.0f}/s ({report['dtype']})", color="#b00020", fontsize=8,
                  va="top")
    for bar, r in zip(bars, first):
        fraction = f"  {r['roofline_fraction']:.0%} of roofline" if r.get("roofline_fraction") else ""
        kept = (r.get("quality") or {}).get("greedy_prefix_tokens")
        text = f"; text = fp32's for {kept}/{r['quality']['compared_tokens']} tokens" if kept is not None else ""
        left.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {bar.get_width():.1f}{fraction}{text}",
                  va="center", fontsize=8)
    left.invert_yaxis()
    left.set_xlabel(f"decode tokens/s per sequence (batch {batches[0]})")
    left.set_title(f"{report['model']}, {report['dtype']} on {report['device']}; "
                   f"{bandwidth / 1e9:.0f} GB/s measured", fontsize=10)
    left.set_xlim(0, max(speeds + [limit]) * 1.35 or 1)
    if len(batches) > 1:
        for name in dict.fromkeys(r["method"] for r in results):
            rows = sorted((r for r in results if r["method"] == name), key=lambda r: r["batch"])
            right.plot([r["batch"] for r in rows], [r["tokens_per_second"] for r in rows], marker="o", label=name)
        right.set_xscale("log", base=2)
        right.set_xlabel("batch size")
        right.set_ylabel("tokens/s (all sequences)")
        right.set_title("throughput", fontsize=10)
        right.legend(fontsize=8)
    else:
        right.barh(names, [r["peak_memory_bytes"] / 2**30 for r in first], color="#7a7a7a")
        right.invert_yaxis()
        right.set_xlabel("peak memory, GiB (resident on CPU; allocated on GPU)")
        right.set_title("memory", fontsize=10)
    fig.tight_layout()
    return fig


def metric_against_size(rows: list[dict], x: str, ys: list[str], series: str | None = None, title: str = "",
                        log_x: bool = True) -> Figure:
    """Small multiples of `ys` against `x` (speed, memory and repetition against model size), one line
    per value of `series` (e.g. the decoding)."""
    fig, axes = plt.subplots(1, len(ys), figsize=(4.3 * len(ys), 3.5))
    axes = axes if len(ys) > 1 else [axes]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row.get(series, "")) if series else "", []).append(row)
    for axis, y in zip(axes, ys):
        for label, group in groups.items():
            group = sorted(group, key=lambda r: r[x])
            axis.plot([r[x] for r in group], [r[y] for r in group], marker="o", label=label or None)
        if log_x:
            axis.set_xscale("log")
        if x == "parameters":  # label the sizes themselves: 125.2M, 1.32B
            ticks = sorted({r[x] for r in rows})
            axis.set_xticks(ticks, [human_count(t) for t in ticks])
            axis.minorticks_off()
        axis.set_xlabel(x)
        axis.set_title(y, fontsize=10)
    if len(groups) > 1:
        axes[-1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def strategies_figure(summary: list[dict], measures: list[str], title: str = "") -> Figure:
    """One horizontal bar chart per measure, one bar per decoding strategy."""
    fig, axes = plt.subplots(1, len(measures), figsize=(4.3 * len(measures), 0.42 * len(summary) + 1.4),
                             sharey=True)
    axes = axes if len(measures) > 1 else [axes]
    names = [row["decoding"] for row in summary]
    for axis, measure in zip(axes, measures):
        axis.barh(names, [row.get(measure, 0) or 0 for row in summary], color="#3b7dd8")
        axis.set_title(measure, fontsize=10)
    axes[0].invert_yaxis()
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
