"""The check's results: token agreement between methods, the JSON files and the figures."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.files import save_figure

from .run import Run, error_record
from .steps import Check

# ------------------------------------------------------------------------------------------ results


def token_agreement(steps: dict, methods: tuple[str, ...], reference: str = "hf") -> None:
    """Each method's greedy tokens against plain `model.generate`'s in the unquantized dtype: the share of
    positions that agree, and the first that does not."""
    ref = steps.get(f"small-{reference}", {})
    if ref.get("status") != "ok":
        return
    expected = ref["result"]["measurement"]["token_ids"]
    for name in methods:
        record = steps.get(f"small-{name}", {})
        if record.get("status") != "ok":
            continue
        got = record["result"]["measurement"]["token_ids"]
        same = [a == b for a, b in zip(got, expected)]
        record["result"]["token_agreement"] = {
            "reference": reference, "agreement": sum(same) / len(expected) if expected else None,
            "first_difference": same.index(False) if False in same else None, "identical": got == expected}


def write_results(run: Run, check: Check) -> None:
    """The small model's report (bench schema) and figures beside the summary; a figure that cannot be
    made is recorded, not fatal."""
    from helpers.analysis.benchmark import Report

    p, figures = run.profile, {}
    token_agreement(run.steps, p.methods)
    reports = check.small_reports
    if reports:
        first = reports[0]
        merged = Report(model=first.model, parameters=first.parameters, dtype=first.dtype, device=first.device,
                        facts=first.facts, bandwidth=first.bandwidth,
                        settings=dict(first.settings, methods=[m.method for r in reports for m in r.measurements]),
                        measurements=[m for r in reports for m in r.measurements])
        merged.write(run.out / f"gpu-{p.small.name}.json")
    swept = run.steps.get("medium-sweep", {}).get("status") == "ok"  # not a report an earlier run left there
    for name, make in (("small", lambda: _bench_figure(run.out / f"gpu-{p.small.name}.json") if reports else "-"),
                       ("medium", lambda: _bench_figure(run.out / f"gpu-{p.medium.name}.json") if swept else "-"),
                       ("fits", lambda: _fits_figure(run))):
        try:
            figures[name] = make()
        except Exception as exc:  # a figure is a view of the JSON, which is written whatever happens here
            figures[name] = {"error": error_record(exc)}
    run.summary["figures"] = figures
    run.write()


def _bench_figure(report: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from helpers.analysis.plots import benchmark_figure

    if not report.is_file():
        return "not made: no measurements"
    data = json.loads(report.read_text())
    if not any(not r.get("skipped") for r in data["results"]):
        return "not made: nothing ran"
    path = report.with_suffix(".png")
    save_figure(benchmark_figure(data), path, dpi=110, bbox_inches="tight")
    return str(path.name)


def _fits_figure(run: Run) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from .figure import gpu_check_figure

    path = run.out / "gpu-check-fits.png"
    save_figure(gpu_check_figure(run.summary), path, dpi=110, bbox_inches="tight")
    return path.name
