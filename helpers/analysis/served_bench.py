"""`bench --model URL`: a served model's speed against concurrency, beside raw requests and the weights here."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..generation.backends.served import completion_request
from ..generation.run import generate
from ..generation.settings import GenerationSettings
from ..opt.sizes import BOS_TOKEN_ID
from ..serving.model import ServedModel, connect
from .benchmark import hardware_facts

FILLER_TOKEN = 5  # ' the': prompts of an exact length


def bench_prompt(i: int, prompt_tokens: int) -> list[int]:
    """Request `i`'s prompt: `prompt_tokens` ids, distinct from the others' (no prefix-cache hit)."""
    return [BOS_TOKEN_ID] + [FILLER_TOKEN] * (prompt_tokens - 2) + [1000 + i]


def bench_settings(new_tokens: int) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=new_tokens, min_new_tokens=new_tokens)  # every request runs out


def _row(level: int, requests: int, seconds: float, each: list[tuple[int, float, float]]) -> dict:
    """The figures from each request's (new tokens, seconds to its first token, its total seconds)."""
    tokens = sum(n for n, _, _ in each)
    return {"concurrency": level, "requests": requests, "new_tokens": tokens, "seconds": seconds,
            "aggregate_tokens_per_second": tokens / seconds,
            "tokens_per_second_per_stream": statistics.median(n / total if total > 0 else 0.0 for n, _, total in each),
            "time_to_first_token": statistics.median(first for _, first, _ in each)}


def _sweep(level: int, requests: int, one: Callable[[int], tuple[int, float, float]],
           progress: Callable[[], None] | None) -> dict:
    """`requests` calls of `one`, `level` in flight at once (threads, one blocking request each)."""
    def timed(i: int) -> tuple[int, float, float]:
        figures = one(i)
        if progress is not None:
            progress()
        return figures

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=level) as pool:
        each = list(pool.map(timed, range(requests)))
    return _row(level, requests, time.perf_counter() - start, each)


def concurrency_row(model: ServedModel, tokenizer: PreTrainedTokenizerBase, level: int, requests: int,
                    prompt_tokens: int, new_tokens: int, progress: Callable[[], None] | None = None) -> dict:
    """`requests` generations through this project's client, `level` in flight at once: the figures."""
    settings = bench_settings(new_tokens)

    def one(i: int) -> tuple[int, float, float]:
        t = generate(model, tokenizer, bench_prompt(i, prompt_tokens), settings.replace(seed=i)).timings
        return t.new_tokens, t.time_to_first_token or 0.0, t.total_seconds

    return _sweep(level, requests, one, progress)


def raw_row(model: ServedModel, level: int, requests: int, prompt_tokens: int, new_tokens: int) -> dict:
    """The same requests (same prompts, settings and seeds, the same JSON body) as plain httpx streaming POSTs,
    counting the tokens of the chunks as they arrive: what the server gives, less this project's client."""
    settings = bench_settings(new_tokens)

    def one(i: int) -> tuple[int, float, float]:
        request = completion_request(model.name, [bench_prompt(i, prompt_tokens)], settings.replace(seed=i),
                                     new_tokens, top_logprobs=0, logprobs=False)
        body = {**{k: v for k, v in request.items() if k != "extra_body"}, **request["extra_body"]}
        start, first, tokens = time.perf_counter(), None, 0
        for chunk in model.connection.raw_stream(body):
            for choice in chunk.get("choices") or []:
                got = len(choice.get("token_ids") or []) or (1 if choice.get("text") else 0)
                if got and first is None:
                    first = time.perf_counter() - start
                tokens += got
        return tokens, first or 0.0, time.perf_counter() - start

    return _sweep(level, requests, one, None)


def local_row(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, level: int, requests: int, prompt_tokens: int,
              new_tokens: int) -> dict:
    """The same prompts on the weights loaded here: `level` prompts as one batch (a local model's way to serve
    several at once), batch after batch until `requests` are done."""
    settings = bench_settings(new_tokens)
    each, start = [], time.perf_counter()
    for first in range(0, requests, level):
        batch = [bench_prompt(i, prompt_tokens) for i in range(first, min(first + level, requests))]
        results = generate(model, tokenizer, batch, settings.replace(seed=first))
        for result in results if isinstance(results, list) else [results]:
            t = result.timings
            each.append((t.new_tokens, t.time_to_first_token or 0.0, t.total_seconds))
    return _row(level, requests, time.perf_counter() - start, each)


def local_folder(served_model_name: str, local: str | None) -> str | None:
    """The weights to load here: `local` if given, else the server's model name where it is a folder this
    machine can read (a server started from a local folder names its model by that path)."""
    if local:
        return local
    path = Path(served_model_name)
    return str(path) if path.is_absolute() and (path / "config.json").is_file() else None


def client_overhead(served: list[dict], raw: list[dict]) -> list[dict]:
    """Per level: the seconds a request spends in this client beyond the raw loop (the level's extra wall time,
    shared by the requests in flight), and this client's tokens/s in all as a fraction of the raw loop's."""
    return [{"concurrency": s["concurrency"],
             "seconds_per_request": (s["seconds"] - r["seconds"]) * s["concurrency"] / s["requests"],
             "aggregate_ratio": s["aggregate_tokens_per_second"] / r["aggregate_tokens_per_second"]}
            for s, r in zip(served, raw)]


def served_benchmark(url: str, levels: list[int], prompt_tokens: int = 10, new_tokens: int = 64,
                     requests_per_level: int | None = None, api_key: str | None = None, local: str | None = None,
                     device: str = "auto", dtype: str = "auto",
                     progress: Callable[[str], None] = lambda line: None) -> dict:
    """Rows for each concurrency level (requests per level: the level, twice, by default) through this client
    (`rows`), a raw httpx loop (`raw_rows`) and, where the weights can be loaded here, the local model
    (`local_rows`, `local`); with the server and the client machine's facts (the server's own hardware is not
    visible from here)."""
    model, tokenizer, info = connect(url, api_key=api_key)
    rows, raw_rows, local_rows = [], [], []
    for level in levels:
        requests = requests_per_level or 2 * level
        rows.append(concurrency_row(model, tokenizer, level, requests, prompt_tokens, new_tokens))
        raw_rows.append(raw_row(model, level, requests, prompt_tokens, new_tokens))
        row, raw = rows[-1], raw_rows[-1]
        progress(f"{level} at once: {row['aggregate_tokens_per_second']:.1f} tokens/s in all "
                 f"(raw requests {raw['aggregate_tokens_per_second']:.1f}), {row['tokens_per_second_per_stream']:.1f} "
                 f"per stream, first token {row['time_to_first_token']:.3f} s")
    folder = local_folder(info.model, local)
    if folder is not None:
        from ..loading.model import load_model

        lmodel, ltokenizer, _ = load_model(folder, device=device, dtype=dtype)
        for level in levels:
            local_rows.append(local_row(lmodel, ltokenizer, level, requests_per_level or 2 * level, prompt_tokens,
                                        new_tokens))
            progress(f"{level} at once, loaded here: {local_rows[-1]['aggregate_tokens_per_second']:.1f} tokens/s")
    return {"model": info.model, "server": info.source, "context": info.context, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "client": hardware_facts(), "rows": rows, "raw_rows": raw_rows,
            "client_overhead": client_overhead(rows, raw_rows), "local": folder, "local_rows": local_rows}
