"""The benchmark's decoding methods and the model they run on."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from ..generation.backends.base import Backend
from ..generation.backends.cpu_int8 import quantize_weights_int8
from ..generation.backends.registry import BACKENDS
from ..generation.run import generate
from ..generation.settings import GenerationSettings
from ..loading.apply_plan import quantize_dynamic_int8
from ..loading.devices import resolve_device
from ..loading.model import load_model
from ..loading.sources import size_of
from ..memory.dtypes import dtype_name, resolve_dtype
from ..memory.planner import Budget, check_fits, plain_plan
from ..opt.model_state import model_device
from ..opt.random_weights import random_model
from ..opt.sizes import OPTSize, find_size
from ..opt.tokenizer import opt_tokenizer
from .bench_rows import ROWS
from .peer_ctranslate2 import prepare_peer, run_peer


def via_generate(method: str) -> Callable:
    """A benchmark run of `generate(method=...)`: greedy, exactly `new_tokens` tokens."""
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
    return quantize_dynamic_int8(context.model, inplace=False)


def _bf16(context: BenchContext) -> OPTForCausalLM:
    return copy.deepcopy(context.model).to(torch.bfloat16)


def _int8_weights(context: BenchContext) -> OPTForCausalLM:
    return quantize_weights_int8(copy.deepcopy(context.model))


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
    peer: bool = False  # another library's row (not ours), run where that library is installed


# Every decoding backend is measured through generate(), under its registry name, except two measured otherwise:
# 'auto' is generate()'s own pick (cpu-fast on the CPU), and 'hf' times model.generate itself, without this package
# around it. Quantized rows run 'auto' on the model loaded with a memory plan. bench_rows.ROWS lists the same rows
# without torch (for `bench --help`); a test holds the two equal.
_MEASURED_OTHERWISE = ("cpu-fast", "hf")
_FIRST = ("tutorial", "cached")  # the slowest reference first; then hf, static, any new backend, auto, quantized


def method_rows(backends: dict[str, Backend] = BACKENDS) -> dict[str, Method]:
    """The benchmark's rows, in the order they have always come (the slowest reference first); a new backend's
    row comes before 'auto'."""
    def row(name: str) -> Method:
        return Method(name, backends[name].summary, via_generate(name))

    def described(name: str, run: Callable, **kwargs) -> Method:
        text, devices = ROWS[name]
        return Method(name, text, run, devices=devices, **kwargs)

    return {m.name: m for m in [
        *(row(name) for name in _FIRST),
        described("hf", _plain_model_generate),
        row("static"),
        *(row(name) for name in backends if name not in (*_FIRST, "static", *_MEASURED_OTHERWISE)),
        described("auto", via_generate("auto")),
        described("auto+int8-cpu", via_generate("auto"), prepare=_int8_dynamic),
        described("auto+bf16-cpu", via_generate("auto"), prepare=_bf16),
        described("auto+int8-weights-cpu", via_generate("auto"), prepare=_int8_weights),
        described("auto+int8", via_generate("auto"), prepare=_bitsandbytes("int8")),
        described("auto+nf4", via_generate("auto"), prepare=_bitsandbytes("nf4")),
        described("ctranslate2", run_peer, prepare=prepare_peer("float32", "float32"), peer=True),
        described("ctranslate2+int8", run_peer, prepare=prepare_peer("int8", "int8"), peer=True),
    ]}


METHODS: dict[str, Method] = method_rows()


def default_methods(device: str) -> list[str]:
    """The methods `bench` runs when none are named: every default one that runs on `device`, in row order."""
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


def benchmark_model(model: str | OPTSize, device: str = "auto", dtype: str = "auto") -> BenchContext:
    """Random weights in a real OPT shape for a size name (or an `OPTSize`), else the model in a local folder."""
    device = resolve_device(device)
    size = model if isinstance(model, OPTSize) else find_size(model)
    if size is not None:
        net = random_model(size, dtype=resolve_dtype(dtype, device), device=device)
        return BenchContext(net, opt_tokenizer(), f"{size.name} (random weights)")
    loaded = load_model(model, device=device, dtype=dtype)
    return BenchContext(loaded.model, loaded.tokenizer, model, source_folder=loaded.info.source)


def check_random_model_fits(model: str | OPTSize, device: str, dtype: str, *, context: int, batch: int) -> None:
    """Before the model is made or loaded: refuse, with the planner's figures, what would not fit."""
    size = model if isinstance(model, OPTSize) else size_of(model)
    device = resolve_device(device)
    dtype = dtype_name(resolve_dtype(dtype, device))
    method = plain_plan(device, dtype)
    if method is not None:
        check_fits(size, method, Budget.of_machine(), context=context, batch=batch,
                   what=f"Benchmarking {size.name} ({dtype} on {device})")
