"""matplotlib figures made from results (benchmark JSON, comparison rows) for the notebooks and the README."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ..units import human_count


def _ran(results: list[dict]) -> list[dict]:
    return [r for r in results if not r.get("skipped")]


def benchmark_figure(report: dict) -> Figure:
    """Decode speed per method against the roofline, and (for a batch sweep) throughput against batch
    size, or else peak memory per method."""
    results = _ran(report["results"])
    batches = sorted({r["batch"] for r in results})
    first = [r for r in results if r["batch"] == batches[0]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    names = [r["method"] for r in first]
    speeds = [r["decode_tokens_per_second"] or 0 for r in first]
    bars = left.barh(names, speeds, color=["#3b7dd8" if r["quality"] is None else "#e08a2c" for r in first])
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
        left.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {bar.get_width():.1f}{fraction}",
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


def gpu_check_figure(summary: dict) -> Figure:
    """`make gpu-check`'s answers: peak GPU memory measured against the planner's prediction under the T4
    budget, resident memory while loading against a free Colab's RAM, and the CUDA memory (and resident
    memory) left after each load/unload cycle. A step that did not run says why in its panel."""
    fig, (fits, ram, cycles) = plt.subplots(1, 3, figsize=(15, 4.6))
    _fits_panel(fits, summary)
    _ram_panel(ram, summary)
    _cycles_panel(cycles, summary)
    fig.suptitle(f"gpu-check ({summary['profile']}), {summary['started']}", fontsize=11)
    fig.tight_layout()
    return fig


def _missing(axis, steps: dict, key: str) -> bool:
    """Whether the step did not run; if so, its panel says why."""
    record = steps.get(key, {})
    if record.get("status") == "ok":
        return False
    why = record.get("reason") or (record.get("error") or {}).get("message") or "not run"
    axis.text(0.5, 0.5, f"{key}: {record.get('status', 'not run')}\n{why[:160]}", ha="center", va="center",
              wrap=True, fontsize=8, transform=axis.transAxes)
    axis.set_axis_off()
    return True


def _fits_panel(fits, summary: dict) -> None:
    """Peak GPU memory, predicted and measured, of every fit attempt (out of memory hatched)."""
    steps = summary["steps"]
    labels, predicted, measured, failed = [], [], [], []
    for key in ("medium-fit", "large-fit"):
        if steps.get(key, {}).get("status") != "ok":
            continue
        for attempt in steps[key]["result"]["attempts"]:
            labels.append(f"{steps[key]['model']} {steps[key]['result']['method']}\n{attempt['context']} tokens, "
                          f"{attempt['generation_method']}")
            if attempt["fits"]:
                predicted.append(attempt["predicted_bytes"] / 2**30)
                measured.append(attempt["measured_bytes"] / 2**30)
            else:
                predicted.append((attempt.get("planner_peak_bytes") or 0) / 2**30)
                measured.append((attempt.get("peak_before_failure_bytes") or 0) / 2**30)
            failed.append(not attempt["fits"])
    if labels:
        x = range(len(labels))
        fits.bar([i - 0.2 for i in x], predicted, 0.4, label="planner's prediction", color="#9db7e0")
        bars = fits.bar([i + 0.2 for i in x], measured, 0.4, label="measured peak", color="#3b7dd8")
        for bar, out_of_memory in zip(bars, failed):
            if out_of_memory:
                bar.set_hatch("//")
                fits.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), "out of\nmemory", ha="center",
                          va="bottom", fontsize=7)
        if summary["settings"].get("gpu_memory"):
            fits.axhline(summary["settings"]["gpu_memory"] / 2**30, color="#b00020", linestyle="--", linewidth=1,
                         label="T4 budget")
        fits.set_xticks(list(x), labels, fontsize=7)
        fits.set_ylabel("GiB (GPU allocated; resident growth on CPU)")
        fits.set_title("peak memory under the budget", fontsize=10)
        fits.legend(fontsize=7)
    else:
        _missing(fits, steps, "medium-fit")


def _ram_panel(ram, summary: dict) -> None:
    """Resident memory while loading, by kind, against a free Colab's RAM."""
    steps = summary["steps"]
    if _missing(ram, steps, "medium-load-ram"):
        return
    result = steps["medium-load-ram"]["result"]
    sampled = result["peak_sampled"]
    names = ["peak resident", "of it anonymous", "of it file pages", "planner's RAM"]
    values = [result["peak_resident_bytes"], sampled.get("RssAnon", 0), sampled.get("RssFile", 0),
              result.get("predicted_ram_bytes") or 0]
    ram.barh(names, [v / 1e9 for v in values], color=["#3b7dd8", "#7aa6e6", "#b7cdf0", "#9a9a9a"])
    ram.axvline(summary["colab_ram_bytes"] / 1e9, color="#b00020", linestyle="--", linewidth=1)
    ram.text(summary["colab_ram_bytes"] / 1e9, 3.4, " free Colab", color="#b00020", fontsize=8, va="bottom")
    ram.invert_yaxis()
    ram.set_xlabel("GB")
    ram.set_title(f"RAM while loading {steps['medium-load-ram']['model']} ({result['load_seconds']:.1f} s)",
                  fontsize=10)


def _cycles_panel(cycles, summary: dict) -> None:
    """Resident and CUDA memory left after each load/unload cycle."""
    steps = summary["steps"]
    if _missing(cycles, steps, "small-leaks"):
        return
    result = steps["small-leaks"]["result"]
    n = range(1, len(result["resident_bytes_after_each"]) + 1)
    cycles.plot(n, [b / 2**20 for b in result["resident_bytes_after_each"]], marker="o", label="resident")
    cycles.plot(n, [b / 2**20 for b in result["cuda_allocated_bytes_after_each"]], marker="s",
                label="CUDA allocated")
    cycles.set_xlabel("load / generate / unload cycle")
    cycles.set_ylabel("MiB after the unload")
    cycles.set_title(f"memory left after each cycle of {steps['small-leaks']['model']}", fontsize=10)
    cycles.legend(fontsize=8)
