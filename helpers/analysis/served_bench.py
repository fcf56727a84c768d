"""`bench --model URL`: a served model's first-token time and tokens/s, per stream and in all, against concurrency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from transformers import PreTrainedTokenizerBase

from ..generation.results import GenerationResult
from ..generation.run import generate
from ..generation.settings import GenerationSettings
from ..opt.sizes import BOS_TOKEN_ID
from ..serving.model import ServedModel, connect
from .benchmark import hardware_facts

FILLER_TOKEN = 5  # ' the': prompts of an exact length


def concurrency_row(model: ServedModel, tokenizer: PreTrainedTokenizerBase, level: int, requests: int,
                    prompt_tokens: int, new_tokens: int, progress: Callable[[], None] | None = None) -> dict:
    """`requests` generations, `level` in flight at once (threads, one blocking request each): the figures."""
    settings = GenerationSettings(max_new_tokens=new_tokens, min_new_tokens=new_tokens)  # every request runs out

    def one(i: int) -> GenerationResult:
        prompt = [BOS_TOKEN_ID] + [FILLER_TOKEN] * (prompt_tokens - 2) + [1000 + i]  # distinct: no prefix-cache hit
        result = generate(model, tokenizer, prompt, settings.replace(seed=i))
        if progress is not None:
            progress()
        return result

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=level) as pool:
        results = list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - start
    tokens = sum(r.timings.new_tokens for r in results)
    return {"concurrency": level, "requests": requests, "new_tokens": tokens, "seconds": seconds,
            "aggregate_tokens_per_second": tokens / seconds,
            "tokens_per_second_per_stream": statistics.median(r.timings.tokens_per_second for r in results),
            "time_to_first_token": statistics.median(r.timings.time_to_first_token or 0.0 for r in results)}


def served_benchmark(url: str, levels: list[int], prompt_tokens: int = 10, new_tokens: int = 64,
                     requests_per_level: int | None = None, api_key: str | None = None,
                     progress: Callable[[str], None] = lambda line: None) -> dict:
    """Rows for each concurrency level (requests per level: the level, twice, by default), with the server and
    the client machine's facts (the server's own hardware is not visible from here)."""
    model, tokenizer, info = connect(url, api_key=api_key)
    rows = []
    for level in levels:
        rows.append(concurrency_row(model, tokenizer, level, requests_per_level or 2 * level, prompt_tokens, new_tokens))
        row = rows[-1]
        progress(f"{level} at once: {row['aggregate_tokens_per_second']:.1f} tokens/s in all, "
                 f"{row['tokens_per_second_per_stream']:.1f} per stream, first token {row['time_to_first_token']:.3f} s")
    return {"model": info.model, "server": info.source, "context": info.context, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "client": hardware_facts(), "rows": rows}
