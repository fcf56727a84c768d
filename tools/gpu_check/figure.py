"""`make gpu-check`'s figure: fits under the T4 budget, RAM while loading, memory left after each cycle."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


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
