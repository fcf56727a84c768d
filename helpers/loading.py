"""`load_model` from a short name, a hub id or a local folder; `unload` that really frees the memory."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import shutil
import time
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2Tokenizer, OPTForCausalLM, PreTrainedTokenizerBase

from .cpu_engine import drop_engine
from .environment import PeakResidentMemory, default_device, resident_memory_bytes
from .errors import ModelLoadError, ModelUnloadedError, UnknownModelError
from .fetch import hub_endpoint, hub_offline, hub_reachable, is_lfs_pointer, lfs_pull_hint, offline_message
from .models import (
    BOS_TOKEN_ID,
    MAX_POSITIONS,
    SIZES,
    OPTSize,
    dtype_name,
    find_size,
    human_bytes,
    resolve_dtype,
    size_from_config,
)
from .opt.model_state import is_unloaded, mark_unloaded, model_device
from .planner import Budget, Option, choose, load_arguments, parse_bytes
from .planner import plan as make_plan

TOKENIZER_DIR = Path(__file__).parent / "data" / "opt-tokenizer"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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

    def summary(self) -> str:
        plan = f" (plan {self.plan.method})" if self.plan is not None and self.plan.method != "fp32-cpu" else ""
        return (
            f"{self.size.name} from {self.source}: {self.parameters / 1e6:.1f}M parameters, {self.dtype} on "
            f"{self.device}{plan}, weights {human_bytes(self.weight_bytes)}, loaded in {self.load_seconds:.1f} s"
        )


class LoadedModel:
    """The model, its tokenizer and facts about them. Unpacks as `model, tokenizer, info = load_model(...)`."""

    def __init__(self, model: OPTForCausalLM, tokenizer: PreTrainedTokenizerBase, info: ModelInfo):
        self.model: OPTForCausalLM | None = model
        self.tokenizer = tokenizer
        self.info = info

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
        """`helpers.generation.generate` with this model and tokenizer."""
        from .generation import generate

        return generate(self._require_model(), self.tokenizer, prompt, settings, **kwargs)

    def stream(self, prompt, settings=None, **kwargs):
        """`helpers.generation.stream` with this model and tokenizer."""
        from .generation import stream

        return stream(self._require_model(), self.tokenizer, prompt, settings, **kwargs)

    def unload(self) -> None:
        """Free the model's memory (see `unload`) and remove a disk-offload folder made for it."""
        if self.model is not None:
            unload(self.model)
            self.model = None
        if self.info.offload_folder is not None:
            shutil.rmtree(self.info.offload_folder, ignore_errors=True)
            self.info.offload_folder = None


def opt_tokenizer(path: str | Path = TOKENIZER_DIR) -> GPT2Tokenizer:
    """OPT's tokenizer from a folder holding vocab.json and merges.txt (default: the copy shipped with
    `helpers`), set up as OPT expects: `</s>` (id 2) prepended once, `<pad>` (id 1), left padding."""
    tokenizer = GPT2Tokenizer.from_pretrained(
        str(path), bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        add_bos_token=True, model_max_length=MAX_POSITIONS,
    )
    return ensure_bos(tokenizer)


def ensure_bos(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Make `tokenizer(text)` start with OPT's BOS exactly once, pad on the left, and know the context.
    The seed used bart-large's tokenizer, which adds no BOS; hub OPT tokenizers add it themselves."""
    if tokenizer.bos_token_id != BOS_TOKEN_ID:
        raise ModelLoadError(
            f"This tokenizer's BOS token is {tokenizer.bos_token!r} (id {tokenizer.bos_token_id}), not OPT's "
            f"'</s>' (id {BOS_TOKEN_ID}): it is not an OPT tokenizer. Use the model's own tokenizer or "
            "helpers.loading.opt_tokenizer()."
        )
    ids = tokenizer("a").input_ids
    if ids[:1] != [BOS_TOKEN_ID]:
        tokenizer.add_bos_token = True
        ids = tokenizer("a").input_ids
    if ids[:1] != [BOS_TOKEN_ID] or ids[1:2] == [BOS_TOKEN_ID]:
        raise ModelLoadError(f"Could not make this tokenizer prepend '</s>' exactly once (it gives {ids}).")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = "<pad>"
    tokenizer.padding_side = "left"
    if tokenizer.model_max_length > MAX_POSITIONS:
        tokenizer.model_max_length = MAX_POSITIONS
    return tokenizer


DEVICE_HINT = "Use 'auto', 'cpu', 'cuda', 'cuda:1' (a GPU by number) or 'mps' (Apple silicon)."


def resolve_device(device: str) -> str:
    """'auto' as this machine's best device; any other name checked before anything loads."""
    if not isinstance(device, str):
        raise ModelLoadError(f"device must be a name such as 'cpu' or 'cuda', not {type(device).__name__}. {DEVICE_HINT}")
    if device == "auto":
        return default_device()
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        kind = None
    if kind not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"Unknown device '{device}'. {DEVICE_HINT}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"Device '{device}' was asked for, but this machine has no Apple GPU that torch can "
                             "use. Use device='cpu' or 'auto'.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"Device '{device}' was asked for, but this machine has no CUDA GPU that torch can see "
            f"(torch {torch.__version__}). Use device='cpu', or on Colab pick Runtime > Change runtime type > GPU."
        )
    return device


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def resolve_source(name: str) -> tuple[str, bool]:
    """(where to load from, whether it is a local folder) for a short name, hub id or folder.

    Raises:
        ModelLoadError: a path that does not exist, or a folder that is not a model folder.
        UnknownModelError: a name that is none of the above.
    """
    name = name.strip()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            checkpoints = sorted(p.name for p in path.glob("**/*.pt"))[:3]
            hint = (
                f" It holds metaseq checkpoint files ({', '.join(checkpoints)}): convert them first with "
                f"`python -m helpers convert-metaseq {name} OUT_FOLDER`, then load OUT_FOLDER."
                if checkpoints else " Pass a folder made by `save_pretrained` (config.json plus weights)."
            )
            raise ModelLoadError(f"The folder '{name}' has no config.json, so it is not a Hugging Face model folder.{hint}")
        return str(path.resolve()), True
    if path.is_file():
        folder = str(path.parent)
        what = ("an original metaseq checkpoint? Convert it first with `python -m helpers convert-metaseq "
                f"{name} OUT_FOLDER`, then load OUT_FOLDER" if path.suffix == ".pt" else
                f"pass the folder that holds it and its config.json instead: {folder}")
        raise ModelLoadError(f"'{name}' is a file, but a model is loaded from its folder: {what}.")
    if _looks_like_path(name) or path.suffix in (".pt", ".bin", ".safetensors"):
        raise ModelLoadError(
            f"The folder '{name}' does not exist. Check the path (relative paths start from "
            f"{os.getcwd()}), or pass a short name such as 'opt-350m' to download from the Hugging Face Hub."
        )
    size = find_size(name)
    if size is not None and "/" not in name:
        return size.hub_id, False
    if _HUB_ID.match(name):
        return name, False
    raise UnknownModelError(
        f"'{name}' is not a model this can load. Pass a short name ({', '.join(SIZES)}), a Hugging Face hub "
        "id such as 'facebook/opt-350m', or a local folder holding config.json and the weights."
    )


def _cached_snapshot(repo_id: str, revision: str | None) -> str | None:
    """The local snapshot folder of a hub model if its config and weights are already cached."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except Exception:  # not cached (the exception type varies between huggingface_hub versions)
        return None
    has_weights = any(Path(folder).glob("*.safetensors")) or any(Path(folder).glob("*.bin"))
    return folder if has_weights and (Path(folder) / "config.json").is_file() else None


def _check_opt_folder(folder: str) -> None:
    config_path = Path(folder) / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_path} cannot be read ({exc}). Re-download or re-convert the model.") from None
    if config.get("model_type") != "opt":
        raise ModelLoadError(
            f"{folder} holds a '{config.get('model_type')}' model, not OPT. This project loads OPT models only."
        )
    weights = [p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin")]
    if not weights:
        raise ModelLoadError(
            f"{folder} has a config.json but no weights (*.safetensors or *.bin). If it is a git clone, run "
            f"`git lfs install && git lfs pull` in {folder}; otherwise copy the weight files into it."
        )
    for weight in weights:
        if is_lfs_pointer(weight):
            raise ModelLoadError(lfs_pull_hint(weight))


def load_tokenizer(source: str, local: bool) -> PreTrainedTokenizerBase:
    """The model's own tokenizer, or OPT's shipped one for a local folder that has none."""
    folder = Path(source)
    if local and not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        return opt_tokenizer()
    return ensure_bos(AutoTokenizer.from_pretrained(source, local_files_only=local))


def weight_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor holding the model's weights, once: parameters, buffers, and torch's packed int8
    weights (which are neither)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    seen, out = set(), []
    candidates = list(model.parameters()) + list(model.buffers())
    for module in model.modules():
        if isinstance(module, DynamicInt8Linear):
            candidates += [t for t in (module.weight(), module.bias()) if t is not None]
    for tensor in candidates:
        key = id(tensor) if tensor.device.type == "meta" else tensor.data_ptr()  # offloaded: no memory, no address
        if key not in seen:
            seen.add(key)
            out.append(tensor)
    return out


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in weight_tensors(model))


def _memory_now(device: str) -> int:
    return torch.cuda.memory_allocated() if device.startswith("cuda") else resident_memory_bytes()


class PeakMemory:
    """The one peak measurement: while the block runs, the most memory allocated on a CUDA `device` (its
    peak counter reset on entry), elsewhere this process's peak resident memory (`PeakResidentMemory`).
    `baseline` is the reading at entry, `bytes` the peak, `added` the difference."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.baseline = self.bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self._resident = PeakResidentMemory().__enter__()
            self.baseline = self._resident.peak
        return self

    def __exit__(self, *exc) -> bool:
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._resident.__exit__(*exc)
            self.bytes = self._resident.peak
        return False

    @property
    def added(self) -> int:
        return self.bytes - self.baseline


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
) -> LoadedModel:
    """Load an OPT model and its tokenizer.

    Args:
        name_or_path: a short name ('opt-350m'), a hub id ('facebook/opt-350m') or a local folder.
        device: 'auto' (the GPU if there is one), 'cpu', 'cuda', 'cuda:1', 'mps'.
        dtype: 'auto' (fp16 on a GPU, fp32 on the CPU), 'float32', 'float16' or 'bfloat16'.
        plan: how to fit the model in memory (see `helpers.planner`): 'auto' (the default when device and
            dtype are both 'auto') picks the best option that fits this machine; a method name
            ('fp16', 'int8', 'nf4', 'fp16-cpu-offload', 'fp32-cpu', ...) asks for that one.
        gpu_memory, cpu_memory: budgets to plan against instead of the machine's ('15GiB').
        context, batch: the tokens per sequence and the sequences to plan the cache and working memory for
            (context: the model's whole context by default, 2048 for OPT).
        offload_folder: where disk offload puts weights (default: a temporary folder).
        revision: a hub branch, tag or commit.
        progress: called as progress(stage, done, total) while weights load (a widget's progress bar).

    Returns:
        A `LoadedModel`: `model, tokenizer, info = load_model("opt-350m")`.

    Raises:
        UnknownModelError: the name is not a size, a hub id or a folder.
        ModelLoadError: the hub cannot be reached, the folder is missing or incomplete, or it is not OPT.
    """
    if plan is None and device == "auto" and dtype == "auto":
        plan = "auto"
    if plan is not None and (device != "auto" or dtype != "auto"):
        raise ModelLoadError(f"Pass either a memory plan ({plan!r}) or a device and dtype, not both: the plan "
                             "chooses where each part of the model goes and in which precision.")
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    source, local = resolve_source(name_or_path)
    if not local:
        cached = _cached_snapshot(source, revision)
        if cached is not None:
            source, local = cached, True
        else:
            _require_hub(source)
    if local:
        _check_opt_folder(source)

    chosen, made_folder = None, None
    arguments = {"dtype": torch_dtype, "device_map": {"": device} if device != "cpu" else None}
    if plan is None:  # the device and dtype asked for: refuse before loading what the planner says cannot fit
        _check_plain_load_fits(name_or_path, source, device, torch_dtype, gpu_memory, cpu_memory, context, batch)
    if plan is not None:
        chosen = _plan_for(name_or_path, source, local, plan, gpu_memory, cpu_memory, context, batch)
        arguments = load_arguments(chosen, offload_folder)
        made_folder = arguments.get("offload_folder") if offload_folder is None else None
        device = "cuda" if any(str(d).isdigit() for d in arguments.get("device_map", {}).values()) else "cpu"
    start, before = time.perf_counter(), _memory_now(device)
    try:
        try:
            tokenizer = load_tokenizer(source, local)
            with _reporting_progress(progress):
                # transformers would fill missing or misshapen weights with random values and only log it (or
                # raise pointing at a report the silenced log never shows): ask for its findings and judge them
                model, loading_info = OPTForCausalLM.from_pretrained(
                    source, revision=revision, local_files_only=local, output_loading_info=True,
                    ignore_mismatched_sizes=True, **arguments)
            damage = _damage(loading_info)
            if chosen is not None and chosen.dtype == "int8-dynamic" and not damage:
                model = quantize_dynamic_int8(model)
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
    except BaseException:  # a failed, refused or interrupted load leaves no offload folder behind
        if made_folder is not None:
            shutil.rmtree(made_folder, ignore_errors=True)
        raise
    if made_folder is not None:  # removed by unload(), else when the model is freed or Python exits
        weakref.finalize(model, shutil.rmtree, made_folder, True)
    model.eval()
    seconds = time.perf_counter() - start
    size = find_size(name_or_path) or size_from_config(model.config, name=Path(source).name)
    placed = {str(d) for d in getattr(model, "hf_device_map", {}).values()}
    info = ModelInfo(
        plan=chosen,
        name=name_or_path,
        source=source,
        size=size,
        parameters=sum(t.numel() * (2 if t.dtype == torch.uint8 else 1) for t in weight_tensors(model)),
        dtype=_dtype_label(model, chosen),
        device=", ".join(sorted(placed)) if len(placed) > 1 or "disk" in placed else str(model_device(model)),
        weight_bytes=_weight_bytes(model),
        memory_used_bytes=max(0, _memory_now(device) - before),
        load_seconds=seconds,
        offload_folder=made_folder,
    )
    return LoadedModel(model, tokenizer, info)


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
    labels = {"int8": "int8 (bitsandbytes)", "nf4": "nf4 (bitsandbytes)", "int8-dynamic": "int8 (dynamic)"}
    if plan is not None and plan.dtype in labels:
        return labels[plan.dtype]
    return dtype_name(model.dtype)


def _require_hub(repo_id: str) -> None:
    """Raise the offline message now if the hub cannot be used, rather than a hub client's error later."""
    if hub_offline():
        raise ModelLoadError(offline_message(repo_id, "the hub is switched off here (HF_HUB_OFFLINE is set)"))
    if not hub_reachable():
        raise ModelLoadError(offline_message(repo_id, f"{hub_endpoint()} cannot be reached (no network?)"))


def size_of(name_or_path: str) -> OPTSize:
    """The architecture of a size name, a local model folder, or a hub model (its config.json, fetched).

    Raises:
        UnknownModelError / ModelLoadError: as `load_model` would, before any download.
    """
    from transformers import AutoConfig

    size = find_size(name_or_path)
    if size is not None:
        return size
    source, local = resolve_source(name_or_path)
    if local:
        _check_opt_folder(source)
    elif _cached_snapshot(source, None) is None:
        _require_hub(source)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local)
    except Exception as exc:  # the hub client and the config parser raise their own types
        if local:
            raise ModelLoadError(f"{source}/config.json cannot be read as an OPT config ({exc}).") from None
        raise ModelLoadError(offline_message(source, f"its config could not be fetched ({exc})")) from None
    return size_from_config(config, name=Path(source).name)


def _plan_for(name: str, source: str, local: bool, method: str, gpu_memory, cpu_memory, context: int | None,
              batch: int) -> Option:
    """The planner's choice for this model on this machine (or the given budgets)."""
    size = find_size(name) or size_of(source)
    try:
        budget = Budget.of_machine(gpu_bytes=None if gpu_memory is None else parse_bytes(gpu_memory),
                                   cpu_bytes=None if cpu_memory is None else parse_bytes(cpu_memory))
        options = make_plan(size, budget, context=context, batch=batch)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    return choose(options, method, model=size.name, budget=budget)


def _check_plain_load_fits(name: str, source: str, device: str, dtype: torch.dtype, gpu_memory, cpu_memory,
                           context: int | None, batch: int) -> None:
    from .models import dtype_name
    from .planner import check_fits, plain_method

    method = plain_method(device, dtype_name(dtype))
    if method is None:
        return
    size = find_size(name) or size_of(source)
    budget = Budget.of_machine(gpu_bytes=None if gpu_memory is None else parse_bytes(gpu_memory),
                               cpu_bytes=None if cpu_memory is None else parse_bytes(cpu_memory))
    check_fits(size, method, budget, context=context, batch=batch,
               what=f"Loading {size.name} in {dtype_name(dtype)} on {device}")


def quantize_dynamic_int8(model: OPTForCausalLM, inplace: bool = True) -> OPTForCausalLM:
    """torch's dynamic int8 quantization of every Linear, lm_head included (its tie to the token table
    is broken: the table stays fp32 for the lookup): the CPU's 8-bit plan."""
    import warnings

    with warnings.catch_warnings():  # torch marks these APIs deprecated in favour of torchao
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=inplace)


def _release_freed_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:  # glibc keeps freed small blocks in its arenas; hand them back to the OS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def unload(model: torch.nn.Module | LoadedModel | None) -> None:
    """Free a model's memory, even where other names still refer to it (a notebook's `model`
    variable, a widget): every tensor is moved to the meta device, which holds no data, and the
    model is marked so that a later use says it was unloaded instead of failing obscurely."""
    if isinstance(model, LoadedModel):
        model.unload()
        return
    if model is None or is_unloaded(model):
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
    _release_freed_memory()
