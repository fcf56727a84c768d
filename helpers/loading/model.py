"""`load_model`, `LoadedModel` (model, tokenizer, facts) and `unload` that really frees the memory."""

from __future__ import annotations

import re
import shutil
import time
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from ..errors import ModelLoadError, ModelUnloadedError
from ..generation.backends.cpu_engine import drop_engine
from ..generation.run import generate
from ..generation.streaming import stream
from ..memory.dtypes import dtype_name, resolve_dtype
from ..memory.measure import memory_now, model_weight_bytes, release_freed_memory, weight_tensors
from ..memory.planner import Option
from ..opt.model_state import is_unloaded, mark_unloaded, model_device
from ..opt.sizes import OPTSize, find_size, size_from_config
from ..opt.tokenizer import load_tokenizer
from ..serving.served_model import is_served
from ..serving.urls import is_server_url
from ..units import human_bytes
from .adapters import AdapterInfo, adapter_for, attach_adapter
from .apply_plan import check_plain_load_fits, load_arguments, plan_for, quantize_for
from .devices import resolve_device
from .fetch import offline_message
from .sources import cached_snapshot, check_opt_folder, require_hub, resolve_source


@dataclass
class ModelInfo:
    """Facts about a loaded model."""

    name: str  # what was asked for
    source: str  # the hub id or the absolute folder it came from
    size: OPTSize  # the architecture (a known OPT size, or one described from the config)
    parameters: int
    dtype: str
    device: str
    weight_bytes: int  # bytes the weights take, counted from the tensors
    memory_used_bytes: int  # growth of GPU memory allocated (CUDA) or of resident memory (CPU) during the load
    load_seconds: float
    plan: Option | None = None  # the memory plan it was loaded with
    offload_folder: str | None = None  # a temporary disk-offload folder, removed by unload()
    adapter: AdapterInfo | None = None  # the LoRA adapter applied to it
    adapter_merged: bool = False  # merged into the weights (merge_and_unload) rather than applied beside them

    @property
    def label(self) -> str:
        """The model's name for people: 'opt-125m', 'opt-125m + my-adapter'."""
        return self.size.name + (f" + {self.adapter.name}" if self.adapter is not None else "")

    def summary(self) -> str:
        plan = f" (plan {self.plan.plan})" if self.plan is not None and self.plan.plan != "fp32-cpu" else ""
        adapter = "" if self.adapter is None else (
            f", LoRA adapter (rank {self.adapter.rank}) {'merged in' if self.adapter_merged else 'applied'}")
        return (
            f"{self.label} from {self.source}: {self.parameters / 1e6:.1f}M parameters, {self.dtype} on "
            f"{self.device}{plan}, weights {human_bytes(self.weight_bytes)}, loaded in {self.load_seconds:.1f} s{adapter}"
        )


class LoadedModel:
    """The model, its tokenizer and facts about them. Unpacks as `model, tokenizer, info = load_model(...)`."""

    def __init__(self, model: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, info: ModelInfo,
                 peft_model=None):
        self.model: OPTForCausalLM | None = model  # with an unmerged adapter, peft's layers are inside it
        self.tokenizer = tokenizer
        self.info = info
        self.peft_model = peft_model  # the PeftModel of an unmerged adapter (to merge or save it), else None

    def __iter__(self):
        return iter((self.model, self.tokenizer, self.info))

    def __repr__(self) -> str:
        state = "unloaded" if self.model is None else self.info.summary()
        return f"LoadedModel({state})"

    def _require_model(self) -> OPTForCausalLM:
        if self.model is None:
            raise ModelUnloadedError.after()
        return self.model

    def generate(self, prompt, settings=None, **kwargs):
        """`helpers.generate` with this model and tokenizer."""
        return generate(self._require_model(), self.tokenizer, prompt, settings, **kwargs)

    def stream(self, prompt, settings=None, **kwargs):
        """`helpers.stream` with this model and tokenizer."""
        return stream(self._require_model(), self.tokenizer, prompt, settings, **kwargs)

    def unload(self) -> None:
        """Free the model's memory (see `unload`) and remove a disk-offload folder made for it."""
        if self.model is not None:
            unload(self.model)
            self.model = None
        if self.info.offload_folder is not None:
            shutil.rmtree(self.info.offload_folder, ignore_errors=True)
            self.info.offload_folder = None


class _ProgressBar:
    """A tqdm look-alike that reports (description, done, total) to a callback."""

    def __init__(self, report: Callable[[str, int, int | None], None], iterable=None, *args, total=None,
                 desc: str = "", **kwargs):
        self.report, self.iterable, self.desc, self.n = report, iterable, desc or "loading", 0
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.report(self.desc, self.n, self.total)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, name):  # close, refresh, set_postfix ...: nothing to do
        return lambda *args, **kwargs: None


@contextmanager
def _reporting_progress(report: Callable[[str, int, int | None], None] | None):
    """Route transformers' loading progress bars to `report` (where this transformers can)."""
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if report is None or set_hook is None:
        yield
        return
    previous = set_hook(lambda factory, args, kwargs: _ProgressBar(report, *args, **kwargs))
    try:
        yield
    finally:
        set_hook(previous)


def load_model(
    name_or_path: str,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    *,
    plan: str | None = None,
    gpu_memory: str | int | None = None,
    cpu_memory: str | int | None = None,
    context: int | None = None,
    batch: int = 1,
    offload_folder: str | None = None,
    revision: str | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
    api_key: str | None = None,
    adapter: str | Path | None = None,
    merge: bool | str = False,
) -> LoadedModel:
    """Load an OPT model and its tokenizer.

    Args:
        name_or_path: a short name ('opt-350m'), a hub id ('facebook/opt-350m'), a local folder, or a server's
            URL ('http://host:8000/v1': a model vLLM serves, see `helpers.serving.model.connect`).
        device: 'auto' (the GPU if there is one), 'cpu', 'cuda', 'cuda:1', 'mps'.
        dtype: 'auto' (fp16 on a GPU, fp32 on the CPU), 'float32', 'float16' or 'bfloat16'.
        plan: how to fit the model in memory (see `helpers.memory.planner`): 'auto' (the default when device and
            dtype are both 'auto') picks the best option that fits this machine; a method name
            ('fp16', 'int8', 'nf4', 'fp16-cpu-offload', 'fp32-cpu', ...) asks for that one.
        gpu_memory, cpu_memory: budgets to plan against instead of the machine's ('15GiB').
        context, batch: the tokens per sequence and the sequences to plan the cache and working memory for
            (context: the model's whole context by default, 2048 for OPT).
        offload_folder: where disk offload puts weights (default: a temporary folder).
        revision: a hub branch, tag or commit.
        progress: called as progress(stage, done, total) while weights load (a widget's progress bar).
        api_key: a server's API key (default: the environment variable OPT_API_KEY); sent only to that server.
        adapter: a LoRA adapter folder (`finetune`'s output, peft's save_pretrained) to apply; an adapter folder
            passed as `name_or_path` loads the base it names, with the adapter.
        merge: merge the adapter into the weights (True; the CPU engine then runs it), keep it beside them (False:
            `peft_model` is peft's PeftModel), or 'auto': merge unless the weights are quantized.

    Returns:
        A `LoadedModel`: `model, tokenizer, info = load_model("opt-350m")`.

    Raises:
        UnknownModelError: the name is not a size, a hub id or a folder.
        ModelLoadError: the hub cannot be reached, the folder is missing or incomplete, or it is not OPT.
        AdapterError: the adapter is not one, was made for another model, or its base is not here.
    """
    name_or_path, adapter_info = adapter_for(name_or_path, adapter)
    if is_server_url(name_or_path) and adapter_info is None:  # nothing is loaded here: the server runs the model
        from ..serving.model import connect  # the openai client is imported only for a served model

        return LoadedModel(*connect(name_or_path, api_key=api_key))
    if plan is None and device == "auto" and dtype == "auto":
        plan = "auto"
    if plan is not None and (device != "auto" or dtype != "auto"):
        raise ModelLoadError(f"Pass either a memory plan ({plan!r}) or a device and dtype, not both: the plan "
                             "chooses where each part of the model goes and in which precision.")
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    source, local = _located(name_or_path, revision)
    chosen, made_folder = None, None
    arguments = {"dtype": torch_dtype, "device_map": {"": device} if device != "cpu" else None}
    if plan is None:  # the device and dtype asked for: refuse before loading what the planner says cannot fit
        check_plain_load_fits(name_or_path, source, device, torch_dtype, gpu_memory, cpu_memory, context, batch)
    else:
        chosen = plan_for(name_or_path, source, local, plan, gpu_memory, cpu_memory, context, batch)
        arguments = load_arguments(chosen, offload_folder)
        made_folder = arguments.get("offload_folder") if offload_folder is None else None
        device = "cuda" if any(str(d).isdigit() for d in arguments.get("device_map", {}).values()) else "cpu"
    start, before = time.perf_counter(), memory_now(device)
    try:
        model, tokenizer = _load_weights(source, local, revision, arguments, chosen, progress)
    except BaseException:  # a failed, refused or interrupted load leaves no offload folder behind
        if made_folder is not None:
            shutil.rmtree(made_folder, ignore_errors=True)
        raise
    if made_folder is not None:  # removed by unload(), else when the model is freed or Python exits
        weakref.finalize(model, shutil.rmtree, made_folder, True)
    model.eval()
    peft_model = None
    if adapter_info is not None:
        try:
            model, peft_model = attach_adapter(model, adapter_info, merge)
        except BaseException:  # refused (another size) or interrupted: free the base that was loaded for it
            unload(model)
            raise
    seconds = time.perf_counter() - start
    placed = {str(d) for d in getattr(model, "hf_device_map", {}).values()}
    info = ModelInfo(
        plan=chosen,
        name=name_or_path,
        source=source,
        size=find_size(name_or_path) or size_from_config(model.config, name=Path(source).name),
        parameters=sum(t.numel() * (2 if t.dtype == torch.uint8 else 1) for t in weight_tensors(model)),
        dtype=_dtype_label(model, chosen),
        device=", ".join(sorted(placed)) if len(placed) > 1 or "disk" in placed else str(model_device(model)),
        weight_bytes=model_weight_bytes(model),
        memory_used_bytes=max(0, memory_now(device) - before),
        load_seconds=seconds,
        offload_folder=made_folder,
        adapter=adapter_info,
        adapter_merged=adapter_info is not None and peft_model is None,
    )
    return LoadedModel(model, tokenizer, info, peft_model)


def _located(name_or_path: str, revision: str | None) -> tuple[str, bool]:
    """(where the model is, whether that is a local folder): a hub id already in the cache counts as local."""
    source, local = resolve_source(name_or_path)
    if not local:
        cached = cached_snapshot(source, revision)
        if cached is not None:
            source, local = cached, True
        else:
            require_hub(source)
    if local:
        check_opt_folder(source)
    return source, local


def _load_weights(source: str, local: bool, revision: str | None, arguments: dict, chosen: Option | None,
                  progress: Callable[[str, int, int | None], None] | None) -> tuple[OPTForCausalLM, PreTrainedTokenizerBase]:
    """The tokenizer and the model, every weight it asks for present and in shape; failures as ModelLoadErrors."""
    try:
        tokenizer = load_tokenizer(source, local)
        with _reporting_progress(progress):
            # transformers would fill missing or misshapen weights with random values and only log it (or
            # raise pointing at a report the silenced log never shows): ask for its findings and judge them
            model, loading_info = OPTForCausalLM.from_pretrained(
                source, revision=revision, local_files_only=local, output_loading_info=True,
                ignore_mismatched_sizes=True, **arguments)
        damage = _damage(loading_info)
        if chosen is not None and not damage:
            model = quantize_for(chosen, model, source if local else cached_snapshot(source, revision))
    except (torch.cuda.OutOfMemoryError, MemoryError):
        raise
    except Exception as exc:  # safetensors, pickle and hub clients each raise their own types
        if local:
            raise ModelLoadError(
                f"Could not load the model in {source}: {exc}. The folder may be incomplete or damaged; "
                "re-download or re-convert it."
            ) from None
        raise ModelLoadError(offline_message(source, f"the download failed ({exc})")) from None
    if damage:
        unload(model)
        raise ModelLoadError(
            f"The model in {source} is damaged: {damage}. Loading it would fill those weights with random "
            "values. Re-download or re-convert the model (or fix config.json if it belongs to another model)."
        )
    return model, tokenizer

def _layers_and_names(keys: list[str]) -> str:
    """'layers 2, 3 (fc1.weight, fc1.bias, ...)' for per-layer names; others listed as they are."""
    layers, names, others = set(), [], []
    for key in keys:
        match = re.match(r"model\.decoder\.layers\.(\d+)\.(.+)", key)
        if match:
            layers.add(int(match.group(1)))
            if match.group(2) not in names:
                names.append(match.group(2))
        else:
            others.append(key)
    parts = []
    if layers:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        parts.append(f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, sorted(layers)))} ({shown})")
    if others:
        parts.append(", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else ""))
    return "; ".join(parts)


def _damage(loading_info: dict) -> str | None:
    """What transformers found missing from, or misshapen in, the weights it loaded; None when nothing."""
    missing = sorted(loading_info.get("missing_keys") or [])
    mismatched = sorted(loading_info.get("mismatched_keys") or [])
    found = []
    if missing:
        found.append(f"{len(missing)} weight tensor(s) that config.json asks for are not in the weight files: "
                     f"{_layers_and_names(missing)}")
    if mismatched:
        key, in_file, expected = mismatched[0]
        found.append(f"{len(mismatched)} weight tensor(s) have another shape than config.json implies "
                     f"({_layers_and_names([k for k, _, _ in mismatched])}; e.g. {key} is {list(in_file)} in the "
                     f"file, {list(expected)} by config.json)")
    return "; ".join(found) or None


def _dtype_label(model: torch.nn.Module, plan: Option | None) -> str:
    labels = {"int8": "int8 (bitsandbytes)", "nf4": "nf4 (bitsandbytes)", "int8-dynamic": "int8 (dynamic)",
              "int8-weights": "int8 (weights)"}
    if plan is not None and plan.dtype in labels:
        return labels[plan.dtype]
    return dtype_name(model.dtype)


def unload(model: torch.nn.Module | LoadedModel | None) -> None:
    """Free a model's memory, even where other names still refer to it (a notebook's `model`
    variable, a widget): every tensor is moved to the meta device, which holds no data, and the
    model is marked so that a later use says it was unloaded instead of failing obscurely."""
    if isinstance(model, LoadedModel):
        model.unload()
        return
    if model is None or is_served(model) or is_unloaded(model):  # a served model's memory is its server's
        return
    drop_engine(model)
    if hasattr(model, "hf_device_map"):  # dispatched by accelerate: its hooks pin the tensors
        from accelerate.hooks import remove_hook_from_module

        for module in model.modules():  # removing an offload hook would first read its weights back in: skip that
            hook = getattr(module, "_hf_hook", None)
            for one in getattr(hook, "hooks", [hook]):
                if getattr(one, "offload", False):
                    one.offload = False
        remove_hook_from_module(model, recurse=True)
    try:
        model.to("meta")
    except (ValueError, RuntimeError, TypeError):  # quantized or offloaded models refuse .to(): drop tensors one by one
        for module in model.modules():
            for store in (module._parameters, module._buffers):
                for key, tensor in store.items():
                    if tensor is not None:
                        store[key] = torch.empty(0, device="meta")
    mark_unloaded(model)
    release_freed_memory()
