"""The timing harness: first token, decode tokens/s, peak memory, roofline fraction and quantization's cost."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from ..environment import detect
from ..files import write_atomically
from ..memory.dtypes import dtype_name
from ..memory.measure import PeakMemory
from ..opt.model_state import model_device
from ..opt.sizes import OPTSize
from .bandwidth import bytes_per_decode_step, measure_bandwidth, tensors_read_whole, wait_for_device
from .bench_methods import METHODS, benchmark_model, check_random_model_fits, default_methods, via_generate
from .bench_quality import Quality, prefix_text, quality_against
from .bench_rows import row_name, with_current_names
from .peer_ctranslate2 import PeerModel, missing_reason
from .peer_ctranslate2 import version as peer_version

SCHEMA = "opt-notebooks/bench/v1"


# ------------------------------------------------------------------------------------------ measuring


@dataclass
class Measurement:
    """One method at one batch size: medians over `repeats` timed runs after a warm-up."""

    method: str
    batch: int
    prompt_tokens: int
    new_tokens: int
    total_seconds: float = 0.0
    time_to_first_token: float | None = None
    tokens_per_second: float = 0.0  # all new tokens (every row) over the whole time
    decode_tokens_per_second: float | None = None  # per sequence, after the first token
    peak_memory_bytes: int = 0  # resident memory (CPU) or max allocated (CUDA) while running
    weight_bytes: int = 0
    bytes_per_step: int = 0
    roofline_fraction: float | None = None
    bandwidth_bytes_per_second: float | None = None  # median of `bandwidths`, what the fraction is measured against
    bandwidths: list[float] = field(default_factory=list)  # per timed run: the mean of those measured just before and after
    repeats: int = 0
    runs_seconds: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # first row, to check methods agree
    quality: Quality | None = None
    skipped: str | None = None  # why it did not run here
    peer: str | None = None  # another library's row, not ours: which ("CTranslate2 4.8.5 (peer, not ours)")
    # The warm-up: the first call on this model, so compilation (the static cache on CUDA) and start-up are in it.
    first_call_seconds: float | None = None
    first_call_new_tokens: int | None = None
    first_call_time_to_first_token: float | None = None
    first_call_extra_seconds: float | None = None  # beyond what a warm call of its length takes: the compiling

    def as_dict(self) -> dict:
        return asdict(self)


def prompt_of_length(tokenizer: PreTrainedTokenizerBase, tokens: int) -> str:
    """A prompt that encodes to exactly `tokens` ids, BOS included."""
    words = "The quick brown fox jumps over the lazy dog while the model keeps on reading".split()
    count = tokens
    while True:  # words split at spaces first, so a longer text's first ids are the shorter one's
        ids = tokenizer(" ".join(words[i % len(words)] for i in range(count))).input_ids
        if len(ids) >= tokens:
            return tokenizer.decode(ids[1:tokens])
        count *= 2


def measure(model: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, method: str, *, prompt_tokens: int = 10,
            new_tokens: int = 128, batch: int = 1, repeats: int = 3, warmup: bool = True,
            bandwidth: float | str | None = None, bandwidth_tensors: list[torch.Tensor] | None = None
            ) -> Measurement:
    """Time one method on `model` as it is; greedy with exactly `new_tokens` new tokens so that every
    method does the same work.

    `bandwidth` gives the roofline fraction: a fixed bytes/s, or "each" to measure the bandwidth (over
    `bandwidth_tensors`, see `measure_bandwidth`) between the timed runs, pairing each run with the mean
    of the bandwidths measured just before and just after it; the fraction is the median of the pairs.
    """
    method = row_name(method, warn=True)
    run = METHODS[method].run
    device = _device(model)
    prompts = [prompt_of_length(tokenizer, prompt_tokens)] * batch
    first_tokens = new_tokens if device.type == "cuda" else min(new_tokens, 4)
    first_seconds = first_ttft = None
    if warmup:  # on a GPU the whole length: compiled static-cache graphs are specialised to it
        first_seconds, _, first_ttft = _timed(run, model, tokenizer, prompts, first_tokens)
    gc.collect()
    seconds, ttfts, ids, bandwidths, peaks = _timed_runs(run, model, tokenizer, prompts, new_tokens, repeats,
                                                        bandwidth == "each", bandwidth_tensors)
    if bandwidth != "each":
        bandwidths = [bandwidth] * repeats if bandwidth else []
    total = statistics.median(seconds)
    ttft = statistics.median(ttfts)
    decode = (new_tokens - 1) / (total - ttft) if total > ttft and new_tokens > 1 else None
    step_bytes = _step_bytes(model, prompt_tokens + new_tokens / 2, batch)
    fractions = [step_bytes * (new_tokens - 1) / (t - ttft) / bw for t, bw in zip(seconds, bandwidths) if t > ttft]
    peak = max(peaks)
    first_extra = None
    if first_seconds is not None:  # a warm call of the warm-up's length: the first token, then decoding
        first_extra = first_seconds - (ttft + (first_tokens - 1) / decode if decode else total)
    return Measurement(
        method=method, batch=batch, prompt_tokens=prompt_tokens, new_tokens=new_tokens, total_seconds=total,
        time_to_first_token=ttft, tokens_per_second=batch * new_tokens / total, decode_tokens_per_second=decode,
        peak_memory_bytes=int(peak), weight_bytes=_step_bytes(model, 0, 1), bytes_per_step=step_bytes,
        roofline_fraction=statistics.median(fractions) if fractions and new_tokens > 1 else None,
        bandwidth_bytes_per_second=statistics.median(bandwidths) if bandwidths else None,
        bandwidths=bandwidths, repeats=repeats, runs_seconds=seconds, token_ids=ids[0],
        first_call_seconds=first_seconds, first_call_new_tokens=first_tokens if warmup else None,
        first_call_time_to_first_token=first_ttft, first_call_extra_seconds=first_extra,
        peer=model.label if isinstance(model, PeerModel) else None,
    )


def _device(subject) -> torch.device:
    return subject.device if isinstance(subject, PeerModel) else model_device(subject)


def _step_bytes(subject, context: float, batch: int) -> int:
    if isinstance(subject, PeerModel):
        return subject.bytes_per_decode_step(context, batch)
    return bytes_per_decode_step(subject, context, batch)


def _timed(run: Callable, model: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
           new_tokens: int) -> tuple[float, list[list[int]], float | None]:
    """(seconds, token ids, time to first token as the method saw it) of one call, the device waited for."""
    device = _device(model)
    wait_for_device(device)
    start = time.perf_counter()
    ids, ttft = run(model, tokenizer, prompts, new_tokens)
    wait_for_device(device)
    return time.perf_counter() - start, ids, ttft


def _timed_runs(run: Callable, model: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                new_tokens: int, repeats: int, pair_bandwidth: bool, bandwidth_tensors: list[torch.Tensor] | None):
    """`repeats` timed calls, each with its peak memory; with `pair_bandwidth` each is paired with the mean of
    the bandwidths (over `bandwidth_tensors`) measured just before and just after it."""
    device = _device(model)
    seconds, ttfts, ids, bandwidths, peaks = [], [], [], [], []

    def bandwidth_now() -> float:  # its buffer is not the method's memory: measured outside the peak
        return measure_bandwidth(device, buffer_bytes=512 << 20, tensors=bandwidth_tensors)["bytes_per_second"]

    before = bandwidth_now() if pair_bandwidth else None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with PeakMemory(device) as peak:
            took, ids, ttft = _timed(run, model, tokenizer, prompts, new_tokens)
        seconds.append(took)
        peaks.append(peak.bytes)
        if before is not None:  # a shared machine's bandwidth drifts: the run gets the mean of both sides
            after = bandwidth_now()
            bandwidths.append((before + after) / 2)
            before = after
        if ttft is not None:
            ttfts.append(ttft)
    if not ttfts:  # plain model.generate exposes no steps: time a one-token call instead
        ttfts = [_timed(run, model, tokenizer, prompts, 1)[0] for _ in range(repeats)]
    return seconds, ttfts, ids, bandwidths, peaks


# ------------------------------------------------------------------------------------------ a run


def hardware_facts() -> dict:
    """What the figures were measured on."""
    env = detect()
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    import transformers

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": env.cpu_count,
        "torch_threads": torch.get_num_threads(),
        "ram_total_bytes": env.ram_total_bytes,
        "gpus": [{"name": g.name, "total_bytes": g.total_bytes, "capability": list(g.capability)} for g in env.gpus],
        "cuda": env.cuda,
        "python": env.python,
        "torch": env.torch,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "ctranslate2": None if missing_reason() else peer_version(),
        "platform": platform.platform(),
    }


@dataclass
class Report:
    """A benchmark run: what was measured, on what, and the figures per method and batch size."""

    model: str
    parameters: int
    dtype: str
    device: str
    facts: dict
    bandwidth: dict
    settings: dict
    measurements: list[Measurement]

    def table(self) -> list[dict]:
        reference = next((m.token_ids for m in self.measurements if not m.skipped and m.quality is None), [])
        rows = []
        for m in self.measurements:
            if m.skipped:
                rows.append({"method": m.method, "batch": m.batch, "weights MiB": "", "tokens/s": "", "decode tokens/s": "",
                             "first token s": "", "peak memory MiB": "", "roofline": "", "quality": f"skipped: {m.skipped}",
                             "greedy text = reference's for": ""})
                continue
            quality = (f"max logit err {m.quality.max_logit_error:.3g}, agree {m.quality.greedy_agreement:.0%} "
                       "teacher-forced" if m.quality
                       else ("same tokens" if m.token_ids == reference else "DIFFERENT tokens"))
            rows.append({
                "method": f"{m.method} (peer)" if m.peer else m.method, "batch": m.batch,
                "weights MiB": round(m.weight_bytes / 2**20),
                "tokens/s": round(m.tokens_per_second, 2),
                "decode tokens/s": round(m.decode_tokens_per_second, 2) if m.decode_tokens_per_second else "",
                "first token s": round(m.time_to_first_token, 4) if m.time_to_first_token is not None else "",
                "peak memory MiB": round(m.peak_memory_bytes / 2**20),
                "roofline": f"{m.roofline_fraction:.0%}" if m.roofline_fraction is not None else "",
                "quality": quality,
                "greedy text = reference's for": prefix_text(m.quality) if m.quality else "",
            })
        return rows

    def as_dict(self) -> dict:
        return {
            "schema": SCHEMA, "model": self.model, "parameters": self.parameters, "dtype": self.dtype,
            "device": self.device, "hardware": self.facts, "bandwidth": self.bandwidth, "settings": self.settings,
            "results": [m.as_dict() for m in self.measurements],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        """A report read back from its JSON (as committed under benchmarks/; rows under older names renamed)."""
        data = with_current_names(data)
        measurements = []
        for row in data["results"]:
            row = dict(row)
            quality = row.pop("quality", None)
            measurements.append(Measurement(**row, quality=Quality(**quality) if quality else None))
        return cls(model=data["model"], parameters=data["parameters"], dtype=data["dtype"], device=data["device"],
                   facts=data["hardware"], bandwidth=data["bandwidth"], settings=data["settings"],
                   measurements=measurements)

    @classmethod
    def read(cls, path: str | Path) -> Report:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def read_all(cls, folder: str | Path) -> list[tuple[Path, Report]]:
        """Every benchmark report in `folder`, by file name; other results there (playground speed, plan checks,
        the GPU check) have their own schema and are left out."""
        paths = sorted(Path(folder).glob("*.json"))
        return [(path, cls.read(path)) for path in paths if json.loads(path.read_text()).get("schema") == SCHEMA]

    def write(self, path: str | Path) -> None:
        """The JSON to `path`, whole or not at all (a failed write leaves an older file there as it was)."""
        write_atomically(path, json.dumps(self.as_dict(), indent=2) + "\n")


def run_suite(model: str | OPTSize, methods: list[str] | None = None, *, device: str = "auto", dtype: str = "auto",
              batches: list[int] = (1,), prompt_tokens: int = 10, new_tokens: int = 128, repeats: int = 3,
              progress: Callable[[str], None] = lambda line: None) -> Report:
    """Measure every method at every batch size on the same model, in one process; quantized methods
    also get their quality against the unquantized model."""
    check_random_model_fits(model, device, dtype, context=prompt_tokens + new_tokens, batch=max(batches))
    context = benchmark_model(model, device, dtype)
    net, tokenizer = context.model, context.tokenizer
    device_type = model_device(net).type
    methods = [row_name(m, warn=True) for m in methods] if methods else default_methods(device_type)
    peers_missing = missing_reason() if any(METHODS[m].peer for m in methods) else None
    if peers_missing:  # the peer rows are left out, not failed: one line says why
        progress(f"peer rows {', '.join(m for m in methods if METHODS[m].peer)} left out: {peers_missing}")
        methods = [m for m in methods if not METHODS[m].peer]
    progress("measuring the memory bandwidth")
    yardstick = tensors_read_whole(net) if device_type == "cpu" else None
    bandwidth = measure_bandwidth(model_device(net), tensors=yardstick)
    prompt = prompt_of_length(tokenizer, prompt_tokens)
    reference = None
    if any(METHODS[m].prepare for m in methods):  # the unquantized greedy continuation quality is judged on
        reference = via_generate("cached")(net, tokenizer, [prompt], new_tokens)[0][0]  # the same tokens, uncompiled
    # On the CPU the methods take turns, one timed run each a round, so that a load on a shared machine falls on
    # every row alike; on a GPU each runs its repeats in one go (a quantized copy is made and freed in its turn).
    rounds, each = (repeats, 1) if device_type == "cpu" else (1, repeats)
    runs: dict[tuple[str, int], list[Measurement]] = {}
    measurements = []
    try:
        subjects = {}
        for turn in range(rounds):
            for method in methods:
                spec = METHODS[method]
                if device_type not in spec.devices:
                    measurements += [Measurement(method, batch, prompt_tokens, new_tokens,
                                                 skipped=f"runs on {' or '.join(spec.devices)}, not {device_type}")
                                     for batch in batches] if turn == 0 else []
                    continue
                if method not in subjects:
                    subjects[method] = spec.prepare(context) if spec.prepare else net
                    if isinstance(subjects[method], PeerModel):
                        progress(f"{method}: {subjects[method].label}, {subjects[method].origin}")
                with _parked(net, spec.prepare is not None and device_type == "cuda"):
                    for batch in batches:
                        progress(f"{method}: batch {batch}, " + (f"{repeats} runs" if rounds == 1 else
                                 f"round {turn + 1} of {rounds}") + f" of {new_tokens} new tokens after a "
                                 f"{prompt_tokens}-token prompt")
                        runs.setdefault((method, batch), []).append(
                            measure(subjects[method], tokenizer, method, prompt_tokens=prompt_tokens,
                                    new_tokens=new_tokens, batch=batch, repeats=each, bandwidth="each",
                                    bandwidth_tensors=yardstick, warmup=turn == 0))
                if turn == rounds - 1:
                    rows = [_merged(runs[(method, batch)]) for batch in batches]
                    for m in rows if spec.prepare else []:
                        m.quality = quality_against(subjects[method], net, tokenizer, prompt, reference, m.token_ids)
                    measurements += rows
                if rounds == 1:
                    del subjects[method]
                    gc.collect()
    finally:
        context.close()
    return Report(
        model=context.label, parameters=sum(p.numel() for p in net.parameters()),
        dtype=dtype_name(net.dtype), device=str(model_device(net)), facts=hardware_facts(),
        bandwidth=bandwidth, measurements=measurements,
        settings={"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "batches": list(batches),
                  "repeats": repeats, "methods": methods, "peers_left_out": peers_missing},
    )


def _merged(turns: list[Measurement]) -> Measurement:
    """One row from a method's turns (each of one or more timed runs): medians over all their runs."""
    first = turns[0]
    if len(turns) == 1:
        return first
    seconds = [t for m in turns for t in m.runs_seconds]
    bandwidths = [b for m in turns for b in m.bandwidths]
    total, ttft = statistics.median(seconds), statistics.median(m.time_to_first_token for m in turns)
    steps = first.new_tokens - 1
    fractions = [first.bytes_per_step * steps / (t - ttft) / bw for t, bw in zip(seconds, bandwidths) if t > ttft]
    return dataclasses.replace(
        first, total_seconds=total, time_to_first_token=ttft, tokens_per_second=first.batch * first.new_tokens / total,
        decode_tokens_per_second=steps / (total - ttft) if total > ttft and steps else None,
        peak_memory_bytes=max(m.peak_memory_bytes for m in turns), runs_seconds=seconds, bandwidths=bandwidths,
        roofline_fraction=statistics.median(fractions) if fractions and steps else None, repeats=len(seconds),
        bandwidth_bytes_per_second=statistics.median(bandwidths) if bandwidths else None, token_ids=turns[-1].token_ids)


@contextlib.contextmanager
def _parked(model: OPTForCausalLM, park: bool):
    """Keep `model` in RAM while the block runs, so a GPU's peak memory is the quantized copy's own rather
    than both models'; it comes back for the quality comparison."""
    device = model_device(model)
    moved = False
    if park:
        try:
            model.to("cpu")
            moved = True
        except (RuntimeError, ValueError):  # a model accelerate dispatched may refuse: then both stay
            pass
        torch.cuda.empty_cache()
    try:
        yield
    finally:
        if moved:
            model.to(device)
