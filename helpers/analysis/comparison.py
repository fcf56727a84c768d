"""The comparison notebooks' runs: sizes, decoding strategies and the tutorial's own conditions, measured."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from ..errors import HelpersError
from ..generation.backends.base import DecodeJob
from ..generation.backends.loops import cached_steps
from ..generation.run import generate
from ..generation.settings import PRESETS, GenerationSettings
from ..loading.devices import resolve_device
from ..loading.model import load_model, unload
from ..loading.sources import size_of
from ..memory.measure import PeakMemory
from ..memory.planner import Budget, plan
from ..opt.model_state import model_device
from ..opt.random_weights import random_model
from ..opt.tokenizer import encode_prompt, opt_tokenizer
from .metrics import perplexity, repetition

TUTORIAL_PROMPTS = [
    "Natural language processing is a subfield of",
    "Today is a beautiful day and I want to",
    "Text classification is a machine learning technique",
]
STRATEGIES: dict[str, GenerationSettings] = {
    "greedy": GenerationSettings.greedy(max_new_tokens=60),
    "beam search (4)": GenerationSettings(do_sample=False, num_beams=4, max_new_tokens=60),
    "temperature 0.7": GenerationSettings(temperature=0.7, top_p=1.0, top_k=0, max_new_tokens=60),
    "top-k 40": GenerationSettings(temperature=1.0, top_k=40, top_p=1.0, max_new_tokens=60),
    "top-p 0.9": GenerationSettings(temperature=1.0, top_p=0.9, max_new_tokens=60),
    "typical 0.9": GenerationSettings(temperature=1.0, top_p=1.0, typical_p=0.9, max_new_tokens=60),
    "repetition penalty 1.3": GenerationSettings.greedy(max_new_tokens=60, repetition_penalty=1.3),
    "no repeated 3-grams": GenerationSettings.greedy(max_new_tokens=60, no_repeat_ngram_size=3),
    "contrastive (alpha 0.6, k 4)": GenerationSettings(do_sample=False, penalty_alpha=0.6, top_k=4,
                                                        max_new_tokens=60),
}


@dataclass
class Subject:
    """A model under comparison and what was measured loading it."""

    name: str
    model: OPTForCausalLM
    tokenizer: PreTrainedTokenizerBase
    parameters: int
    release: Callable[[], None]


@contextlib.contextmanager
def loaded(name: str, *, random_weights: bool = False, device: str = "auto") -> Iterator[Subject]:
    """A model for one comparison round, unloaded afterwards: a size, a hub id or a folder; or, with
    `random_weights`, random weights in a size's real shape (speed and memory are real, text is not)."""
    if random_weights:
        target = resolve_device(device)
        model = random_model(name, dtype=torch.float32 if target == "cpu" else torch.float16, device=target)
        subject = Subject(name, model, opt_tokenizer(), sum(p.numel() for p in model.parameters()),
                          lambda: unload(model))
    else:
        opt = load_model(name) if device == "auto" else load_model(name, device=device)
        subject = Subject(name, opt.model, opt.tokenizer, opt.info.parameters, opt.unload)
    try:
        yield subject
    finally:
        subject.release()
        gc.collect()


def _row(subject: Subject, label: str, result, peak: int | None = None) -> dict:
    measures = repetition(result.token_ids)
    row = {
        "model": subject.name, "parameters": subject.parameters, "decoding": label, "prompt": result.prompt,
        "text": result.text, "seconds": round(result.timings.total_seconds, 3),
        "tokens/s": round(result.timings.tokens_per_second, 1),
        "distinct-2": round(measures.distinct_2, 3), "repeated 3-grams": round(measures.repeated_3gram_rate, 3),
        "longest loop": measures.longest_loop,
    }
    if peak is not None:
        row["peak memory GiB"] = round(peak / 2**30, 3)
    return row


def fitting(models: list[str], exclude: tuple[str, ...] = ("disk-offload",)) -> tuple[list[str], dict[str, str]]:
    """The models this machine can run usefully (a memory plan other than `exclude` fits), and why the
    others are left out."""
    budget, keep, left_out = Budget.of_machine(), [], {}
    for name in models:
        try:
            size = size_of(name)
        except HelpersError as exc:
            left_out[name] = str(exc)
            continue
        best = next((o for o in plan(size, budget) if o.usable), None)
        if best is None or best.plan in exclude:
            left_out[name] = "nothing fits this machine" if best is None else f"only with {best.plan} here (too slow)"
        else:
            keep.append(name)
    return keep, left_out


def compare_sizes(models: list[str], prompts: list[str] = TUTORIAL_PROMPTS,
                  decodings: dict[str, GenerationSettings] | None = None, *, random_weights: bool = False,
                  device: str = "auto", progress: Callable[[str], None] = lambda line: None) -> list[dict]:
    """Every prompt with every decoding on every model, one model in memory at a time. A model that does
    not fit this machine (or cannot be loaded) gets a row saying why instead."""
    decodings = decodings or {"greedy, 30 tokens (the tutorial's)": GenerationSettings.greedy(30),
                              "balanced sampling": PRESETS["balanced sampling"].replace(max_new_tokens=30, seed=0)}
    rows = []
    for name in models:
        progress(f"loading {name}")
        try:
            with loaded(name, random_weights=random_weights, device=device) as subject:
                # one untimed call first: the first generation also builds the CPU engine and calibrates
                generate(subject.model, subject.tokenizer, prompts[0], GenerationSettings.greedy(2))
                for label, settings in decodings.items():
                    progress(f"{name}: {label}")
                    with PeakMemory(model_device(subject.model)) as peak:
                        results = [generate(subject.model, subject.tokenizer, p, settings) for p in prompts]
                    rows += [_row(subject, label, r, peak.bytes) for r in results]
        except HelpersError as exc:
            rows.append({"model": name, "decoding": "skipped", "text": str(exc)})
    return rows


def summarize(rows: list[dict], by: tuple[str, ...], measures: tuple[str, ...]) -> list[dict]:
    """Means of `measures` over the rows sharing the values of `by` (skipped rows left out)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if all(m in row for m in measures):
            groups.setdefault(tuple(row[k] for k in by), []).append(row)
    return [{**dict(zip(by, key)), **{m: round(sum(r[m] for r in group) / len(group), 3) for m in measures}}
            for key, group in groups.items()]


def compare_strategies(model: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                       strategies: dict[str, GenerationSettings] = STRATEGIES, *, seed: int = 0,
                       max_new_tokens: int | None = None) -> list[dict]:
    """Each strategy on each prompt: the text, its repetition measures and its speed (see
    `add_judge_perplexity` for how likely a larger model finds it)."""
    rows = []
    subject = Subject("model", model, tokenizer, sum(p.numel() for p in model.parameters()), lambda: None)
    for label, settings in strategies.items():
        settings = settings.replace(seed=seed)
        if max_new_tokens:
            settings = settings.replace(max_new_tokens=max_new_tokens)
        for prompt in prompts:
            rows.append(_row(subject, label, generate(model, tokenizer, prompt, settings)))
    return rows


# ------------------------------------------------------------------------------------------ the tutorial's output


@contextlib.contextmanager
def without_final_layer_norm(model: OPTForCausalLM) -> Iterator[OPTForCausalLM]:
    """The model as metaseq ran checkpoints that lack `decoder.version`: the final layer norm dropped."""
    decoder = model.model.decoder
    if decoder.final_layer_norm is None:
        raise ValueError("This model has no final layer norm to drop (the 350M shape normalizes after each layer).")
    kept = decoder.final_layer_norm
    decoder.final_layer_norm = torch.nn.Identity()
    try:
        yield model
    finally:
        decoder.final_layer_norm = kept


def _continue(model: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, ids: list[int],
              settings: GenerationSettings) -> list[int]:
    """New tokens after exactly `ids` (no start token added: the tutorial's tokenizer added none)."""
    job = DecodeJob(model, tokenizer, [ids], settings.replace(seed=settings.seed or 0), settings.max_new_tokens)
    return [step[0].id for step in cached_steps(job)]


def tutorial_conditions(model: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, prompts: list[str] = TUTORIAL_PROMPTS,
                    new_tokens: int = 30, seed: int = 0) -> list[dict]:
    """The tutorial's three conditions switched on and off, all eight ways: greedy or sampling, OPT's start
    token or none (bart-large's tokenizer), the final layer norm kept or dropped (metaseq on a file
    without `decoder.version`). Each row: the conditions, the text, the repetition measures."""
    decodings = {"greedy": GenerationSettings.greedy(new_tokens, min_new_tokens=new_tokens),
                 "sampling": PRESETS["balanced sampling"].replace(max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                                 seed=seed)}
    has_norm = model.model.decoder.final_layer_norm is not None
    rows = []
    for norm in ((True, False) if has_norm else (True,)):
        with contextlib.ExitStack() as stack:
            if not norm:
                stack.enter_context(without_final_layer_norm(model))
            for bos in (True, False):
                for label, settings in decodings.items():
                    for prompt in prompts:
                        ids = encode_prompt(tokenizer, prompt)
                        start = time.perf_counter()
                        new = _continue(model, tokenizer, ids if bos else ids[1:], settings)
                        measures = repetition(new)
                        rows.append({
                            "decoding": label, "start token": "</s>" if bos else "none",
                            "final layer norm": "kept" if norm else "dropped", "prompt": prompt,
                            "text": tokenizer.decode(new, skip_special_tokens=True),
                            "distinct-2": round(measures.distinct_2, 3),
                            "repeated 3-grams": round(measures.repeated_3gram_rate, 3),
                            "longest loop": measures.longest_loop, "seconds": round(time.perf_counter() - start, 3),
                        })
    return rows


def add_judge_perplexity(rows: list[dict], judge: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase) -> list[dict]:
    """Add each row's continuation perplexity under `judge` (a larger model, loaded after the generator
    was unloaded, so the two never share memory)."""
    for row in rows:
        if row.get("text", "").strip():
            row["judge perplexity"] = round(perplexity(judge, tokenizer, row["text"], context=row["prompt"]), 2)
    return rows

