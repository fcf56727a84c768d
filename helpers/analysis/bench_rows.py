"""The benchmark's rows by name, without torch: what `bench --help` lists and `--methods` takes, old names mapped."""

from __future__ import annotations

import warnings

BOTH = ("cpu", "cuda")

# name -> (description, devices). A row is named by the decoding backend it times (the registry's names; 'auto' is
# generate()'s own pick); a quantized row by the backend and the memory plan it loads with ('auto+int8-cpu').
# bench_methods builds the measured rows from the registry, and a test holds this list equal to them: the parser
# reads this one so that `--help` does not import torch.
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tutorial": ("the 2022 tutorial's loop: the whole sequence re-run each step", BOTH),
    "cached": ("the cached loop: prefill once, then one token a step", BOTH),
    "hf": ("plain model.generate, its defaults (dynamic cache), without helpers around it", BOTH),
    "static": ("model.generate with a static cache, compiled on CUDA", BOTH),
    "auto": ("helpers' generate(): the fastest correct backend for the device", BOTH),
    "auto+int8-cpu": ("plan int8-cpu: torch dynamic int8 quantization of every Linear, lm_head included", ("cpu",)),
    "auto+bf16-cpu": ("plan bf16-cpu: bf16 weights (half the bytes), fp32 arithmetic, a fused kernel", ("cpu",)),
    "auto+int8-weights-cpu": ("plan int8-weights-cpu: int8 weights, a scale per row, fp32 arithmetic", ("cpu",)),
    "auto+int8": ("plan int8: bitsandbytes LLM.int8()", ("cuda",)),
    "auto+nf4": ("plan nf4: bitsandbytes 4-bit NF4", ("cuda",)),
    # Peers, not ours: another library on the same weights (converted from the same folder), where it is installed.
    "ctranslate2": ("peer, not ours: CTranslate2's Generator on the same weights converted, float32", ("cpu",)),
    "ctranslate2+int8": ("peer, not ours: CTranslate2 converted with --quantization int8, compute type int8", ("cpu",)),
}
PEERS = ("ctranslate2", "ctranslate2+int8")

# The names rows had before they were named by their backend: still taken by --methods, and read from old results.
OLD_NAMES = {"seed-loop": "tutorial", "cached-loop": "cached", "hf-generate": "hf", "static-cache": "static",
             "generate": "auto", "int8-dynamic": "auto+int8-cpu", "bnb-int8": "auto+int8", "bnb-nf4": "auto+nf4"}


def row_name(name: str, *, warn: bool = False) -> str:
    """The current name of a row (an old name mapped; any other returned as it is)."""
    if name in OLD_NAMES and warn:
        warnings.warn(f"bench row '{name}' is now called '{OLD_NAMES[name]}'", DeprecationWarning, stacklevel=2)
    return OLD_NAMES.get(name, name)


def with_current_names(report: dict) -> dict:
    """A benchmark report's JSON (as committed under benchmarks/) with its rows under their current names."""
    results = [dict(r, method=row_name(r["method"])) for r in report["results"]]
    settings = dict(report.get("settings", {}))
    if "methods" in settings:
        settings["methods"] = [row_name(m) for m in settings["methods"]]
    return dict(report, results=results, settings=settings)


def help_lines() -> str:
    """The rows one a line, with the device of those that run on one only (`bench --help`)."""
    return "\n".join(f"  {name:<15}{text}" + ("" if len(devices) > 1 else f" ({devices[0].upper()} only)")
                     for name, (text, devices) in ROWS.items())
