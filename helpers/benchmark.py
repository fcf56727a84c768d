"""Timing harness: time to first token, decode tokens/s, peak memory and the fraction of the memory-bandwidth
roofline for each decoding method, measured side by side in one run, with the quality cost of quantization."""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from .decoding import model_device
from .environment import detect, resident_memory_bytes
from .generation import GenerationSettings, encode_prompt, generate
from .loading import PeakMemory
from .models import OPTSize, dtype_name, kv_cache_bytes_per_token, size_from_config

SCHEMA = "opt-notebooks/bench/v1"


# ------------------------------------------------------------------------------------------ bandwidth


def _median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    """The median, like the decode timings it is compared with: a shared machine's occasional fast or
    slow pass moves neither."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_bandwidth(device: str | torch.device = "cpu", buffer_bytes: int = 1 << 30,
                      tensors: list[torch.Tensor] | None = None) -> dict:
    """Memory bandwidth, measured now. On a GPU: a device-to-device copy of `buffer_bytes` (reads and
    writes counted) and a sum over it (reads alone, as a decode step reads its weights). On the CPU:
    reading `tensors` once (a model's weights: the very bytes a decode step reads, where they live) or a
    fresh buffer, with torch's sum and with numpy's matrix-vector product;
    the faster is the roofline's bandwidth (a shared machine's bandwidth to a fresh buffer drifts by tens
    of percent, and caches may flatter it, so the weights themselves make the steadier yardstick)."""
    device = torch.device(device)
    if device.type != "cpu" or tensors is None:
        n = buffer_bytes // 4
        src = torch.rand(n, dtype=torch.float32, device=device)  # random: no page can be deduplicated
        dst = torch.empty_like(src)
        out = {"buffer_bytes": n * 4, "copy": 2 * n * 4 / _median_seconds(lambda: dst.copy_(src), device)}
        del dst
        tensors = [src.view(-1, 4096)]
    else:
        out = {"buffer_bytes": sum(t.numel() * t.element_size() for t in tensors)}
    read = sum(t.numel() * t.element_size() for t in tensors)  # a sum reads its input once and writes nothing
    out["read_sum"] = read / _median_seconds(lambda: [t.sum() for t in tensors], device)
    if device.type == "cpu":
        matrices = [t.detach().numpy() for t in tensors if t.dim() == 2 and t.dtype == torch.float32]
        vectors = {m.shape[1]: np.ones(m.shape[1], dtype=np.float32) for m in matrices}
        if matrices:
            gemv_bytes = sum(m.nbytes for m in matrices)
            out["read_gemv"] = gemv_bytes / _median_seconds(lambda: [m @ vectors[m.shape[1]] for m in matrices],
                                                            device)
    out["bytes_per_second"] = max(v for k, v in out.items() if k != "buffer_bytes")
    out["used"] = max((k for k in out if k not in ("buffer_bytes", "bytes_per_second")), key=out.get)
    gc.collect()
    return out


def weight_tensors(model: OPTForCausalLM) -> list[torch.Tensor]:
    """The tensors a decode step reads whole (tied ones once; not the position table)."""
    positions = model.model.decoder.embed_positions.weight
    seen, out = set(), []
    for tensor in model.parameters():
        if tensor.data_ptr() not in seen and tensor is not positions:
            seen.add(tensor.data_ptr())
            out.append(tensor.detach())
    return out


def _weight_bytes_read(model: OPTForCausalLM) -> int:
    """Bytes of weights one decode step reads: every weight tensor once (tied ones once), but of the
    position table and of an untied token table only one row."""
    from .loading import weight_tensors

    positions = model.model.decoder.embed_positions.weight
    tokens = model.get_input_embeddings().weight
    tied = getattr(model.lm_head, "weight", None) is tokens  # then the table is read whole, as lm_head
    lookups = [positions] + ([] if tied else [tokens])
    total = sum(t.shape[1] * t.element_size() for t in lookups)
    for tensor in weight_tensors(model):
        if not any(tensor is t for t in lookups):
            total += tensor.numel() * tensor.element_size()
    return total


def bytes_per_decode_step(model: OPTForCausalLM, context: float, batch: int) -> int:
    """What one decode step reads: the weights once, plus the key/value cache of `context` tokens for each
    of the `batch` sequences."""
    size = size_from_config(model.config)
    return int(_weight_bytes_read(model) + kv_cache_bytes_per_token(size, model.dtype) * context * batch)


# ------------------------------------------------------------------------------------------ methods


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _via_generate(method: str) -> Callable:
    def run(model, tokenizer, prompts, new_tokens):
        settings = GenerationSettings.greedy(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        results = generate(model, tokenizer, prompts, settings, method=method)
        return [r.token_ids for r in results], results[0].timings.time_to_first_token
    return run


def _plain_model_generate(model, tokenizer, prompts, new_tokens, **extra):
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model_device(model))
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **extra)
    return out[:, batch.input_ids.shape[1]:].tolist(), None


def _int8_dynamic(context: BenchContext) -> OPTForCausalLM:
    from .loading import quantize_dynamic_int8

    return quantize_dynamic_int8(context.model, inplace=False)


def _bitsandbytes(kind: str) -> Callable[[BenchContext], OPTForCausalLM]:
    def prepare(context: BenchContext) -> OPTForCausalLM:
        from transformers import BitsAndBytesConfig

        if kind == "int8":
            config = BitsAndBytesConfig(load_in_8bit=True)
        else:
            config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                        bnb_4bit_compute_dtype=context.model.dtype)
        folder = context.folder()
        device = model_device(context.model)
        return OPTForCausalLM.from_pretrained(folder, quantization_config=config, dtype=context.model.dtype,
                                              device_map={"": str(device)}).eval()
    return prepare


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    run: Callable
    devices: tuple[str, ...] = ("cpu", "cuda")
    prepare: Callable[[BenchContext], OPTForCausalLM] | None = None  # a quantized copy, say
    default: bool = True  # in the default list on its devices


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("seed-loop", "the 2022 tutorial's loop: the whole sequence re-run each step", _via_generate("tutorial")),
    Method("cached-loop", "the explicit cached loop: prefill, then one token a step", _via_generate("cached")),
    Method("hf-generate", "plain model.generate, its defaults (dynamic cache)", _plain_model_generate),
    Method("static-cache", "model.generate with a static cache (compiled on CUDA)", _via_generate("static")),
    Method("generate", "helpers' generate(): the fastest correct method for the device", _via_generate("auto")),
    Method("int8-dynamic", "torch dynamic int8 quantization of every Linear, lm_head included",
           _via_generate("auto"), devices=("cpu",), prepare=_int8_dynamic),
    Method("bnb-int8", "bitsandbytes LLM.int8()", _via_generate("auto"), devices=("cuda",),
           prepare=_bitsandbytes("int8")),
    Method("bnb-nf4", "bitsandbytes 4-bit NF4", _via_generate("auto"), devices=("cuda",), prepare=_bitsandbytes("nf4")),
]}


def default_methods(device: str) -> list[str]:
    return [m.name for m in METHODS.values() if m.default and device in m.devices]


# ------------------------------------------------------------------------------------------ context


class BenchContext:
    """The model under test and what methods need from it (a folder of its weights for quantized loads)."""

    def __init__(self, model: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, label: str,
                 source_folder: str | None = None):
        self.model, self.tokenizer, self.label = model, tokenizer, label
        self._folder, self._tmp = source_folder, None

    def folder(self) -> str:
        """A folder holding the model's weights (written once, for random-weight models)."""
        if self._folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="opt-bench-")
            self.model.save_pretrained(self._tmp.name)
            self._folder = self._tmp.name
        return self._folder

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


# ------------------------------------------------------------------------------------------ measuring


@dataclass
class Quality:
    """How far a quantized model is from the reference, on the benchmark's prompt and continuation."""

    reference_dtype: str
    max_logit_error: float
    greedy_agreement: float  # share of positions where both pick the same next token (teacher-forced)
    same_greedy_tokens: bool  # the free-running greedy continuations are identical


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


def quality_against(model: OPTForCausalLM, reference: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase,
                    prompt: str, reference_tokens: list[int], tokens: list[int]) -> Quality:
    """Teacher-forced on the reference's greedy continuation: the largest logit difference and how often
    the next-token choices agree; plus whether the free-running greedy outputs are identical."""
    ids = encode_prompt(tokenizer, prompt) + reference_tokens
    with torch.inference_mode():
        ref = reference(torch.tensor([ids], device=model_device(reference))).logits[0].float().cpu()
        got = model(torch.tensor([ids], device=model_device(model))).logits[0].float().cpu()
    start = len(ids) - len(reference_tokens) - 1
    ref, got = ref[start:-1], got[start:-1]
    return Quality(
        reference_dtype=dtype_name(reference.dtype),
        max_logit_error=float((ref - got).abs().max()),
        greedy_agreement=float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
        same_greedy_tokens=tokens == reference_tokens,
    )


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
    run = METHODS[method].run
    device = model_device(model)
    prompts = [prompt_of_length(tokenizer, prompt_tokens)] * batch
    first_tokens = new_tokens if device.type == "cuda" else min(new_tokens, 4)
    first_seconds = first_ttft = None
    if warmup:  # on a GPU the whole length: compiled static-cache graphs are specialised to it
        _sync(device)
        start = time.perf_counter()
        _, first_ttft = run(model, tokenizer, prompts, first_tokens)
        _sync(device)
        first_seconds = time.perf_counter() - start
    gc.collect()
    seconds, ttfts, ids, bandwidths, peaks = [], [], [], [], []

    def bandwidth_now() -> float:  # its buffer is not the method's memory: measured outside the peak
        return measure_bandwidth(device, buffer_bytes=512 << 20, tensors=bandwidth_tensors)["bytes_per_second"]

    before = bandwidth_now() if bandwidth == "each" else None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with PeakMemory(device) as peak:
            _sync(device)
            start = time.perf_counter()
            ids, ttft = run(model, tokenizer, prompts, new_tokens)
            _sync(device)
            seconds.append(time.perf_counter() - start)
        peaks.append(peak.bytes)
        if before is not None:  # a shared machine's bandwidth drifts: the run gets the mean of both sides
            after = bandwidth_now()
            bandwidths.append((before + after) / 2)
            before = after
        if ttft is not None:
            ttfts.append(ttft)
    if not ttfts:  # plain model.generate exposes no steps: time a one-token call instead
        for _ in range(repeats):
            start = time.perf_counter()
            run(model, tokenizer, prompts, 1)
            _sync(device)
            ttfts.append(time.perf_counter() - start)
    if bandwidth != "each":
        bandwidths = [bandwidth] * repeats if bandwidth else []
    total = statistics.median(seconds)
    ttft = statistics.median(ttfts)
    decode = (new_tokens - 1) / (total - ttft) if total > ttft and new_tokens > 1 else None
    step_bytes = bytes_per_decode_step(model, prompt_tokens + new_tokens / 2, batch)
    fractions = [step_bytes * (new_tokens - 1) / (t - ttft) / bw for t, bw in zip(seconds, bandwidths) if t > ttft]
    peak = max(peaks)
    first_extra = None
    if first_seconds is not None:  # a warm call of the warm-up's length: the first token, then decoding
        first_extra = first_seconds - (ttft + (first_tokens - 1) / decode if decode else total)
    return Measurement(
        method=method, batch=batch, prompt_tokens=prompt_tokens, new_tokens=new_tokens, total_seconds=total,
        time_to_first_token=ttft, tokens_per_second=batch * new_tokens / total, decode_tokens_per_second=decode,
        peak_memory_bytes=int(peak), weight_bytes=bytes_per_decode_step(model, 0, 1), bytes_per_step=step_bytes,
        roofline_fraction=statistics.median(fractions) if fractions and new_tokens > 1 else None,
        bandwidth_bytes_per_second=statistics.median(bandwidths) if bandwidths else None,
        bandwidths=bandwidths, repeats=repeats, runs_seconds=seconds, token_ids=ids[0],
        first_call_seconds=first_seconds, first_call_new_tokens=first_tokens if warmup else None,
        first_call_time_to_first_token=first_ttft, first_call_extra_seconds=first_extra,
    )


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
                             "first token s": "", "peak memory MiB": "", "roofline": "", "quality": f"skipped: {m.skipped}"})
                continue
            quality = (f"max logit err {m.quality.max_logit_error:.3g}, agree {m.quality.greedy_agreement:.0%}"
                       if m.quality else ("same tokens" if m.token_ids == reference else "DIFFERENT tokens"))
            rows.append({
                "method": m.method, "batch": m.batch,
                "weights MiB": round(m.weight_bytes / 2**20),
                "tokens/s": round(m.tokens_per_second, 2),
                "decode tokens/s": round(m.decode_tokens_per_second, 2) if m.decode_tokens_per_second else "",
                "first token s": round(m.time_to_first_token, 4) if m.time_to_first_token is not None else "",
                "peak memory MiB": round(m.peak_memory_bytes / 2**20),
                "roofline": f"{m.roofline_fraction:.0%}" if m.roofline_fraction is not None else "",
                "quality": quality,
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
        """A report read back from its JSON (as committed under benchmarks/)."""
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
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.as_dict(), indent=2) + "\n")


def benchmark_model(model: str | OPTSize, device: str = "auto", dtype: str = "auto") -> BenchContext:
    """Random weights in a real OPT shape for a size name (or an `OPTSize`), else the model in a local folder."""
    from .fixtures import random_model
    from .loading import load_model, opt_tokenizer, resolve_device
    from .models import find_size, resolve_dtype

    device = resolve_device(device)
    size = model if isinstance(model, OPTSize) else find_size(model)
    if size is not None:
        net = random_model(size, dtype=resolve_dtype(dtype, device), device=device)
        return BenchContext(net, opt_tokenizer(), f"{size.name} (random weights)")
    loaded = load_model(model, device=device, dtype=dtype)
    return BenchContext(loaded.model, loaded.tokenizer, model, source_folder=loaded.info.source)


def _check_random_model_fits(model: str | OPTSize, device: str, dtype: str, *, context: int, batch: int) -> None:
    """Before the model is made or loaded: refuse, with the planner's figures, what would not fit."""
    from .loading import resolve_device, size_of
    from .models import dtype_name, resolve_dtype
    from .planner import Budget, check_fits, plain_method

    size = model if isinstance(model, OPTSize) else size_of(model)
    device = resolve_device(device)
    dtype = dtype_name(resolve_dtype(dtype, device))
    method = plain_method(device, dtype)
    if method is not None:
        check_fits(size, method, Budget.of_machine(), context=context, batch=batch,
                   what=f"Benchmarking {size.name} ({dtype} on {device})")


def run_suite(model: str | OPTSize, methods: list[str] | None = None, *, device: str = "auto", dtype: str = "auto",
              batches: list[int] = (1,), prompt_tokens: int = 10, new_tokens: int = 128, repeats: int = 3,
              progress: Callable[[str], None] = lambda line: None) -> Report:
    """Measure every method at every batch size on the same model, in one process; quantized methods
    also get their quality against the unquantized model."""
    _check_random_model_fits(model, device, dtype, context=prompt_tokens + new_tokens, batch=max(batches))
    context = benchmark_model(model, device, dtype)
    net, tokenizer = context.model, context.tokenizer
    device_type = model_device(net).type
    methods = methods or default_methods(device_type)
    progress("measuring the memory bandwidth")
    yardstick = weight_tensors(net) if device_type == "cpu" else None
    bandwidth = measure_bandwidth(model_device(net), tensors=yardstick)
    prompt = prompt_of_length(tokenizer, prompt_tokens)
    reference = None
    if any(METHODS[m].prepare for m in methods):  # the unquantized greedy continuation quality is judged on
        reference = _via_generate("cached")(net, tokenizer, [prompt], new_tokens)[0][0]  # the same tokens, uncompiled
    measurements = []
    try:
        for method in methods:
            spec = METHODS[method]
            if device_type not in spec.devices:
                measurements += [Measurement(method, batch, prompt_tokens, new_tokens,
                                             skipped=f"runs on {' or '.join(spec.devices)}, not {device_type}")
                                 for batch in batches]
                continue
            subject = spec.prepare(context) if spec.prepare else net
            rows = []
            with _parked(net, spec.prepare is not None and device_type == "cuda"):
                for batch in batches:
                    progress(f"{method}: batch {batch}, {repeats} runs of {new_tokens} new tokens after a "
                             f"{prompt_tokens}-token prompt")
                    rows.append(measure(subject, tokenizer, method, prompt_tokens=prompt_tokens,
                                        new_tokens=new_tokens, batch=batch, repeats=repeats, bandwidth="each",
                                        bandwidth_tensors=yardstick))
            for m in rows if spec.prepare else []:
                m.quality = quality_against(subject, net, tokenizer, prompt, reference, m.token_ids)
            measurements += rows
            del subject
            gc.collect()
    finally:
        context.close()
    return Report(
        model=context.label, parameters=sum(p.numel() for p in net.parameters()),
        dtype=dtype_name(net.dtype), device=str(model_device(net)), facts=hardware_facts(),
        bandwidth=bandwidth, measurements=measurements,
        settings={"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "batches": list(batches),
                  "repeats": repeats, "methods": methods},
    )


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


def loop_comparison(model: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, prompt: str,
                    new_tokens: int = 30) -> list[dict]:
    """The 2022 tutorial's loop beside the cached loop on one prompt: text, seconds, tokens/s, same tokens or not."""
    rows, reference = [], None
    for method, label in (("tutorial", "the tutorial's loop (no cache)"), ("cached", "cached loop (prefill + one token)"),
                          ("auto", "generate(): the fastest path here")):
        settings = GenerationSettings.greedy(max_new_tokens=new_tokens)
        result = generate(model, tokenizer, prompt, settings, method=method)
        reference = reference or result.token_ids
        rows.append({
            "loop": label,
            "seconds": round(result.timings.total_seconds, 3),
            "tokens/s": round(result.timings.tokens_per_second, 1),
            "same tokens": result.token_ids == reference,
            "text": result.full_text,
        })
    return rows



# ------------------------------------------------------------------------------------------ plan checks


def check_plan(model: str, method: str = "auto", *, gpu_memory: str | int | None = None,
               cpu_memory: str | int | None = None, prompt_tokens: int = 16, new_tokens: int = 256,
               generation_method: str = "auto", progress: Callable[[str], None] = lambda line: None) -> dict:
    """Load `model` (random weights in a size's real shape, or a folder) with a memory plan and generate
    `new_tokens` under the budget (on a GPU, capped with `set_per_process_memory_fraction`, as a T4's
    15 GiB in a bigger card), then compare the planner's predicted peak with the measured one: GPU
    memory allocated (first GPU) when the plan uses a GPU, else the growth of resident memory.
    `generation_method` is `generate()`'s (its default picks the static cache, compiled, on one GPU)."""
    from .loading import load_model, size_of
    from .models import find_size
    from .planner import Budget, choose, parse_bytes, plan

    budget = Budget.of_machine(gpu_bytes=None if gpu_memory is None else parse_bytes(gpu_memory),
                               cpu_bytes=None if cpu_memory is None else parse_bytes(cpu_memory))
    size = size_of(model)
    context = prompt_tokens + new_tokens
    option = choose(plan(size, budget, context=context), method, model=size.name, budget=budget)
    uses_gpu = bool(option.gpu_bytes_each)
    if uses_gpu and gpu_memory is not None:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget.gpu_bytes / total), 0)
    folder, tmp = model, None
    try:  # the temporary folder goes however this ends (an error, Ctrl-C, SIGTERM through helpers.signals)
        if find_size(model) is not None:  # random weights in the size's shape, written once as safetensors
            from .fixtures import random_model
            from .loading import opt_tokenizer

            file_dtype = torch.float16 if uses_gpu else torch.float32  # as published, or as the CPU computes
            progress(f"writing random {size.name} weights ({str(file_dtype)[6:]}) for the plan to load")
            tmp = tempfile.TemporaryDirectory(prefix="opt-plan-")
            net = random_model(size, dtype=file_dtype, device="cpu")
            net.save_pretrained(tmp.name)
            opt_tokenizer().save_pretrained(tmp.name)
            folder = tmp.name
            del net
            gc.collect()
        _warm_up_imports()
        _release_freed_memory()  # freed heap pages go back to the OS, so new allocations show in RSS
        progress(f"loading with plan {option.method}")
        with PeakMemory("cuda:0" if uses_gpu else "cpu") as peak:
            loaded = load_model(folder, plan=option.method, gpu_memory=gpu_memory, cpu_memory=cpu_memory,
                                context=context)
            prompt = prompt_of_length(loaded.tokenizer, prompt_tokens)
            progress(f"generating {new_tokens} tokens")
            result = loaded.generate(prompt, GenerationSettings.greedy(max_new_tokens=new_tokens,
                                                                        min_new_tokens=new_tokens),
                                     method=generation_method)
        measured = peak.added
        predicted = option.predicted_peak_bytes
        loaded.unload()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {
        "schema": "opt-notebooks/plan-check/v1", "model": size.name, "method": option.method,
        "budget": {"gpu_bytes": budget.gpu_bytes, "gpus": budget.gpus, "cpu_bytes": budget.cpu_bytes},
        "context": context, "measured_on": "cuda:0 allocated" if uses_gpu else "resident memory growth",
        "predicted_bytes": int(predicted), "measured_bytes": int(measured),
        "relative_error": (predicted - measured) / measured if measured else None,
        "new_tokens": len(result.token_ids), "tokens_per_second": result.timings.tokens_per_second,
        "generation_method": generation_method, "time_to_first_token": result.timings.time_to_first_token,
        "generate_seconds": result.timings.total_seconds,  # a first call: any compiling is in it
        "option": option.as_dict(), "hardware": hardware_facts(),
    }


def _release_freed_memory() -> None:
    from .loading import _release_freed_memory as release

    release()


def _warm_up_imports() -> None:
    """Import what loading and generating import on first use, so the baseline is the process's own."""
    from transformers import OPTForCausalLM

    from .fixtures import random_model
    from .generation import generate
    from .loading import opt_tokenizer

    model = random_model(OPTSize("warm-up", 2, 4, 64, 256, 64, True), dtype=torch.float32)
    tokenizer = opt_tokenizer()
    generate(model, tokenizer, "warm up", GenerationSettings.greedy(max_new_tokens=2))
    assert isinstance(model, OPTForCausalLM)
    del model, tokenizer
    gc.collect()


# ------------------------------------------------------------------------------------------ leaks


def leak_check(model: str, cycles: int = 20, *, device: str = "auto", new_tokens: int = 16,
               progress: Callable[[str], None] = lambda line: None) -> dict:
    """Load, generate and unload `model` (a folder; or a size, as random weights in its shape) `cycles`
    times, the way a notebook user switches models all afternoon, and record after each unload the
    resident memory, the CUDA memory still allocated and the threads alive. Each cycle generates twice:
    once to the end and once streamed and stopped after a few tokens; every third cycle a generation
    also fails inside the model (an exception mid-stream), as a real fault would."""
    from .loading import _release_freed_memory, load_model
    from .models import find_size

    folder, tmp = model, None
    rss, cuda, threads, faults = [], [], [], 0
    try:
        if find_size(model) is not None:
            from .fixtures import random_model
            from .loading import opt_tokenizer

            tmp = tempfile.TemporaryDirectory(prefix="opt-leaks-")
            net = random_model(model, dtype=torch.float16, device="cpu")
            net.save_pretrained(tmp.name)
            opt_tokenizer().save_pretrained(tmp.name)
            folder = tmp.name
            del net
        for cycle in range(cycles):
            loaded = load_model(folder) if device == "auto" else load_model(folder, device=device)
            loaded.generate("The memory of a long afternoon", max_new_tokens=new_tokens, do_sample=False)
            text_stream = loaded.stream("Stop me after three pieces", max_new_tokens=new_tokens * 4)
            for i, _ in enumerate(text_stream):
                if i == 2:
                    text_stream.stop()
            if cycle % 3 == 2:
                faults += _fault_mid_stream(loaded, new_tokens)
            loaded.unload()
            del loaded, text_stream
            _release_freed_memory()
            rss.append(resident_memory_bytes())
            cuda.append(torch.cuda.memory_allocated() if torch.cuda.is_available() else 0)
            threads.append(threading.active_count())
            progress(f"cycle {cycle + 1}/{cycles}: resident {rss[-1] / 2**20:.0f} MiB, threads {threads[-1]}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {
        "schema": "opt-notebooks/leaks/v1", "model": model, "cycles": cycles, "faults_injected": faults,
        "resident_bytes_after_each": rss, "cuda_allocated_bytes_after_each": cuda, "threads_after_each": threads,
        "resident_growth_bytes": rss[-1] - rss[0] if rss else 0,
        "resident_growth_after_first_bytes": rss[-1] - rss[1] if len(rss) > 1 else 0,
        "hardware": hardware_facts(),
    }


class _InjectedFault(RuntimeError):
    pass


def _fault_mid_stream(loaded, new_tokens: int) -> int:
    """Make the model fail on its fourth step of a streamed generation; return 1 if it surfaced."""
    layer = loaded.model.model.decoder.layers[-1]
    calls = {"n": 0}

    def fail(module, args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise _InjectedFault("injected fault")

    handle = layer.register_forward_pre_hook(fail)
    try:
        for _ in loaded.stream("This one breaks", max_new_tokens=new_tokens, method="cached"):
            pass
    except _InjectedFault:
        return 1
    finally:
        handle.remove()
    return 0
