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
