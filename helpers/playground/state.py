"""The playground's headless state: runs, branches, history entries and the model picker's choices."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field

import torch

from .. import environment
from ..errors import HelpersError
from ..generation.results import GenerationResult, TokenInfo
from ..generation.settings import GenerationSettings
from ..loading.adapters import AdapterInfo, find_adapters, is_adapter, read_adapter
from ..loading.devices import resolve_device
from ..loading.sources import size_of
from ..memory.dtypes import dtype_name, resolve_dtype
from ..memory.planner import Budget, plain_plan, plan
from ..opt.sizes import SIZES, find_size
from ..serving.urls import is_server_url
from ..units import human_bytes


@dataclass
class Run:
    """One generation shown in the playground (a plain run, a branch or a side-by-side column)."""

    label: str
    model: str
    prompt_ids: list[int]
    prompt: str
    tokens: list[TokenInfo]
    result: GenerationResult | None = None
    parent: str | None = None
    branched_at: int | None = None  # index of the replaced token in the parent's tokens
    replaced: tuple[str, str] | None = None  # (parent's token, chosen alternative)
    text: str = ""

    @property
    def mean_logprob(self) -> float | None:
        values = [t.logprob for t in self.tokens if t.logprob is not None]
        return sum(values) / len(values) if values else None


@dataclass
class Branch:
    """A run continued from one of its tokens, replaced by an alternative: what the new run starts from."""

    label: str
    parent: str  # the run's label
    at: int  # index of the replaced token
    replaced: tuple[str, str]  # (the run's token, the chosen alternative)
    prefix_tokens: list[TokenInfo] = field(default_factory=list)  # the run's tokens up to it, then the alternative
    display_prompt: str = ""  # the run's prompt as shown
    prefix_text: str = ""  # the prefix tokens as text

    def start(self, run: Run) -> None:
        """Mark `run` as this branch's."""
        run.parent, run.branched_at, run.replaced = self.parent, self.at, self.replaced


def branch_from(run: Run, index: int, token_id: int, tokenizer, label: str) -> tuple[list[int], GenerationSettings, Branch]:
    """(prompt ids, settings, Branch) that continue `run` from token `index`, replaced by `token_id`."""
    original = run.tokens[index]
    chosen = next((t for t in original.top if t[0] == token_id), None)
    chosen_info = TokenInfo(token_id, chosen[1] if chosen else tokenizer.decode([token_id]),
                            chosen[2] if chosen else None, list(original.top))
    prefix = run.tokens[:index] + [chosen_info]
    settings = run.result.settings
    branch = Branch(label=label, parent=run.label, at=index, replaced=(original.text, chosen_info.text),
                    prefix_tokens=prefix, display_prompt=run.prompt,
                    prefix_text=tokenizer.decode([t.id for t in prefix], skip_special_tokens=True,
                                                 clean_up_tokenization_spaces=False))
    remaining = max(1, settings.max_new_tokens - len(prefix))
    return run.prompt_ids + [t.id for t in prefix], settings.replace(max_new_tokens=remaining), branch


def common_prefix(a: str, b: str) -> int:
    """How many leading characters two texts share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@dataclass
class Model:
    """A choice in the model picker."""

    name: str
    label: str
    fits: bool | None  # None: unknown (a folder or hub id)
    needs_bytes: int | None = None
    base: str | None = None  # for a LoRA adapter (its folder is the name): the base model it loads on


def _base_name(info: AdapterInfo) -> str:
    """The adapter's base as the picker names it: a size, else the folder or hub id peft wrote."""
    size = find_size(info.base_model) if info.base_model else None
    return size.name if size is not None else info.base_model or "?"


def choice_for(name: str) -> Model:
    """The choice for a name typed or passed in: a LoRA adapter folder is labelled 'base + adapter'."""
    if is_adapter(name):
        try:
            info = read_adapter(name)
        except HelpersError:  # listed by its path; picking it says what is wrong
            return Model(name, name, None)
        base = _base_name(info)
        return Model(name, f"{base.rstrip('/').rsplit('/', 1)[-1]} + {info.name}", None, base=base)
    return Model(name, name, None)


def with_adapters(choices: list[Model], folder: str | None) -> list[Model]:
    """`choices` with the adapters under `folder` (and adapter folders among them), each placed after its base
    model and taking the base's memory."""
    found = [choice_for(str(info.path)) for info in find_adapters(folder)] if folder else []
    out = [c for c in choices if c.base is None]
    for choice in [c for c in choices if c.base is not None] + [c for c in found if c.name not in
                                                                {x.name for x in choices}]:
        at = max((i for i, c in enumerate(out) if choice.base in (c.name, c.base)), default=None)
        base = next((c for c in out if c.name == choice.base), None)
        placed = Model(choice.name, choice.label, base.fits if base else None, base.needs_bytes if base else None,
                       choice.base)
        out.insert(len(out) if at is None else at + 1, placed)
    return out


def model_choices(extra: list[str], env: environment.Environment | None = None) -> list[Model]:
    """The OPT sizes, each labelled with the memory plan it would load with here (or marked when none
    fits this machine), then `extra` (folders, hub ids)."""
    budget = Budget.of_machine(env or environment.detect())
    out = []
    for size in SIZES.values():
        options = plan(size, budget)
        best = next((o for o in options if o.usable), None)
        if best is None:
            smallest = min(options, key=lambda o: o.gpu_bytes + o.cpu_bytes)
            needs = smallest.gpu_bytes + smallest.cpu_bytes
            out.append(Model(size.name, f"{size.name} \u26a0 too big here (needs {human_bytes(needs)})", False,
                             smallest.needs_bytes))
            continue
        if best.plan == "disk-offload":
            out.append(Model(size.name, f"{size.name} \u26a0 only from disk here ({best.speed_class})", False,
                             best.needs_bytes))
            continue
        plain = best.plan in ("fp16", "fp32-cpu")
        label = size.name if plain else f"{size.name} \u00b7 {best.plan} ({best.speed_class})"
        out.append(Model(size.name, label, True, best.needs_bytes))
    out += [choice_for(name) for name in extra]
    return out


def needs_bytes(choices: list[Model], name: str, device: str, dtype: str) -> int:
    """What `name` takes loaded on `device` in `dtype` as the playground loads it: the planner's figure."""
    if is_server_url(name):
        return 0  # a served model takes no memory here
    choice = next((c for c in choices if c.name == name), None)
    if choice is not None and choice.needs_bytes is not None:
        return choice.needs_bytes
    try:
        size = size_of(name)
    except HelpersError:
        return 0  # loading it will say what is wrong
    device = resolve_device(device)
    method = plain_plan(device, dtype_name(resolve_dtype(dtype, device)))
    options = plan(size, Budget.of_machine())
    named = next((o for o in options if o.plan == method), None)
    return (named or next((o for o in options if o.usable), options[0])).needs_bytes


def free_bytes(device: str) -> int:
    """Memory free where models load on `device`: the GPU's, else RAM."""
    free = environment.free_memory_bytes(torch.device(resolve_device(device)))
    return free if free is not None else environment.detect().ram_available_bytes


HISTORY_COLUMNS = ["time", "run", "model", "prompt", "output", "finish_reason", "new_tokens", "tokens_per_second",
                   "time_to_first_token", "total_seconds", "settings"]


def history_entry(run: Run) -> dict:
    """One finished run as a history row (what the JSON and CSV exports hold)."""
    result = run.result
    t = result.timings
    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "run": run.label, "model": run.model,
        "prompt": run.prompt, "output": run.text, "settings": result.settings.as_dict(),
        "finish_reason": result.finish_reason, "new_tokens": t.new_tokens,
        "tokens_per_second": round(t.tokens_per_second, 3),
        "time_to_first_token": None if t.time_to_first_token is None else round(t.time_to_first_token, 4),
        "total_seconds": round(t.total_seconds, 4),
    }


def history_json(history: list[dict]) -> str:
    return json.dumps(history, indent=2, ensure_ascii=False)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as a formula (OWASP, CSV injection)


def spreadsheet_safe(value):
    """A CSV cell a spreadsheet shows as text: one starting like a formula gets a leading quote (OWASP's rule);
    numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def history_csv(history: list[dict]) -> str:
    """The history as CSV, every text cell safe to open in a spreadsheet (the JSON export stays exact)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS)
    writer.writeheader()
    for row in history:
        writer.writerow({k: spreadsheet_safe(v) for k, v in {**row, "settings": json.dumps(row["settings"])}.items()})
    return buffer.getvalue()
