"""Timing harness: tokens/s, time to first token and peak memory of each decoding method, in one run."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from .decoding import model_device
from .environment import resident_memory_bytes
from .generation import GenerationSettings, generate


@dataclass
class Measurement:
    """One method's figures: medians over `repeats` timed runs after a warm-up."""

    method: str
    batch: int
    prompt_tokens: int
    new_tokens: int
    total_seconds: float
    time_to_first_token: float | None
    tokens_per_second: float  # all new tokens (every row) over the whole time
    decode_tokens_per_second: float | None  # per sequence, after the first token
    peak_memory_bytes: int
    repeats: int
    runs_seconds: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # first row, to check methods agree

    def as_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> int:
    """Reset the peak counter; return the memory in use now (the baseline)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return resident_memory_bytes()


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resident_memory_bytes()


def _via_generate(method: str) -> Callable:
    def run(model, tokenizer, prompts, new_tokens):
        settings = GenerationSettings.greedy(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        results = generate(model, tokenizer, prompts, settings, method=method)
        return [r.token_ids for r in results], results[0].timings.time_to_first_token
    return run


def _plain_model_generate(model, tokenizer, prompts, new_tokens):
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model_device(model))
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return out[:, batch.input_ids.shape[1]:].tolist(), None


# name -> run(model, tokenizer, prompts, new_tokens) -> (token ids per row, time to first token or None)
METHODS: dict[str, Callable] = {
    "seed-loop": _via_generate("seed"),
    "cached-loop": _via_generate("cached"),
    "generate": _via_generate("auto"),
    "hf-generate": _plain_model_generate,
}


def prompt_of_length(tokenizer: PreTrainedTokenizerBase, tokens: int) -> str:
    """A prompt that encodes to exactly `tokens` ids, BOS included."""
    words = "The quick brown fox jumps over the lazy dog while the model keeps on reading".split()
    text, i = "", 0
    while len(tokenizer(text).input_ids) < tokens:
        text += (" " if text else "") + words[i % len(words)]
        i += 1
    ids = tokenizer(text).input_ids[:tokens]
    return tokenizer.decode(ids[1:])


def measure(
    model: OPTForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    method: str,
    *,
    prompt_tokens: int = 10,
    new_tokens: int = 128,
    batch: int = 1,
    repeats: int = 3,
    warmup: bool = True,
) -> Measurement:
    """Time one method; greedy with exactly `new_tokens` new tokens so every method does the same work."""
    run = METHODS[method]
    device = model_device(model)
    prompts = [prompt_of_length(tokenizer, prompt_tokens)] * batch
    if warmup:
        run(model, tokenizer, prompts, min(new_tokens, 4))
    baseline = _reset_peak(device)
    seconds, ttfts, ids = [], [], []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        ids, ttft = run(model, tokenizer, prompts, new_tokens)
        _sync(device)
        seconds.append(time.perf_counter() - start)
        if ttft is not None:
            ttfts.append(ttft)
    if not ttfts and method == "hf-generate":  # plain model.generate exposes no steps: time a 1-token call
        for _ in range(repeats):
            start = time.perf_counter()
            run(model, tokenizer, prompts, 1)
            _sync(device)
            ttfts.append(time.perf_counter() - start)
    total = statistics.median(seconds)
    ttft = statistics.median(ttfts) if ttfts else None
    decode = (new_tokens - 1) / (total - ttft) if ttft is not None and total > ttft and new_tokens > 1 else None
    return Measurement(
        method=method, batch=batch, prompt_tokens=prompt_tokens, new_tokens=new_tokens, total_seconds=total,
        time_to_first_token=ttft, tokens_per_second=batch * new_tokens / total, decode_tokens_per_second=decode,
        peak_memory_bytes=max(0, _peak(device) - baseline) if device.type == "cuda" else _peak(device),
        repeats=repeats, runs_seconds=seconds, token_ids=ids[0],
    )


def loop_comparison(model: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, prompt: str,
                    new_tokens: int = 30) -> list[dict]:
    """The seed's loop beside the cached loop on one prompt: text, seconds, tokens/s, same tokens or not."""
    rows, reference = [], None
    for method, label in (("seed", "the seed's loop (no cache)"), ("cached", "cached loop (prefill + one token)")):
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


def hardware_facts() -> dict:
    """What the figures were measured on."""
    import datetime
    import platform

    from .environment import detect

    env = detect()
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
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
        "transformers": env.transformers,
        "platform": platform.platform(),
    }


@dataclass
class Report:
    """A benchmark run: what was measured, on what, and the figures per method."""

    model: str
    parameters: int
    dtype: str
    device: str
    facts: dict
    measurements: list[Measurement]

    def table(self) -> list[dict]:
        reference = self.measurements[0].token_ids if self.measurements else []
        rows = []
        for m in self.measurements:
            rows.append({
                "method": m.method,
                "tokens/s": round(m.tokens_per_second, 2),
                "decode tokens/s": round(m.decode_tokens_per_second, 2) if m.decode_tokens_per_second else "",
                "first token s": round(m.time_to_first_token, 4) if m.time_to_first_token is not None else "",
                "total s": round(m.total_seconds, 3),
                "peak memory MiB": round(m.peak_memory_bytes / 2**20),
                "same tokens": m.token_ids == reference,
            })
        return rows

    def as_dict(self) -> dict:
        return {
            "model": self.model, "parameters": self.parameters, "dtype": self.dtype, "device": self.device,
            "hardware": self.facts, "results": [m.as_dict() for m in self.measurements],
        }

    def write(self, path: str) -> None:
        import json
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.as_dict(), indent=2) + "\n")


def benchmark_model(model: str, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer, label): random weights in a real OPT shape for a size name, else a loaded folder."""
    from .fixtures import random_model
    from .loading import load_model, opt_tokenizer, resolve_device, resolve_dtype
    from .models import find_size

    device = resolve_device(device)
    size = find_size(model)
    if size is not None:
        torch_dtype = resolve_dtype(dtype, device)
        return random_model(size, dtype=torch_dtype, device=device), opt_tokenizer(), f"{size.name} (random weights)"
    loaded = load_model(model, device=device, dtype=dtype)
    return loaded.model, loaded.tokenizer, model


def run_suite(model: str, methods: list[str], *, device: str = "auto", dtype: str = "auto", batch: int = 1,
              prompt_tokens: int = 10, new_tokens: int = 128, repeats: int = 3,
              progress: Callable[[str], None] = lambda line: None) -> Report:
    """Measure each method in turn on the same model, in one process."""
    net, tokenizer, label = benchmark_model(model, device, dtype)
    measurements = []
    for method in methods:
        progress(f"{method}: {repeats} runs of {new_tokens} new tokens, batch {batch}, prompt {prompt_tokens} tokens")
        measurements.append(measure(net, tokenizer, method, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                                    batch=batch, repeats=repeats))
    return Report(
        model=label, parameters=sum(p.numel() for p in net.parameters()), dtype=str(net.dtype).removeprefix("torch."),
        device=str(model_device(net)), facts=hardware_facts(), measurements=measurements,
    )
