"""LoRA adapters (peft's folders): read one, refuse one made for another model, apply it, merge it, find them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import AdapterError, HelpersError, ModelLoadError
from ..generation.backends.cpu_engine import has_unmerged_adapter
from ..opt.sizes import SIZES, OPTSize, find_size, size_from_config
from ..serving.served_model import is_served
from ..serving.urls import is_server_url

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# OPT's decoder layers as peft names them: base_model.model.model.decoder.layers.3.self_attn.q_proj.lora_A.weight
_OPT_KEY = re.compile(r"model\.decoder\.layers\.(\d+)\.(?:self_attn\.)?(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")
_ANY_LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")
_IN_IS_HIDDEN = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1")  # lora_A's in_features is the hidden size


@dataclass(frozen=True)
class AdapterInfo:
    """What a LoRA adapter folder says about itself and the model it was made for."""

    path: Path
    base_model: str  # base_model_name_or_path as peft wrote it ('' when it wrote none)
    hidden_size: int
    num_layers: int  # the layers its weights adapt (all of the model's unless `some_layers`)
    rank: int
    target_modules: tuple[str, ...]
    architecture: str = "opt"  # 'opt', or how its weights are named when they are not OPT's
    some_layers: bool = False  # layers_to_transform: it adapts only some layers, num_layers is a lower bound

    @property
    def name(self) -> str:
        """The folder's name, for labels ('opt-125m + my-adapter')."""
        return self.path.name

    def made_for(self) -> str:
        """'a model with hidden size 2048 and 24 layers (opt-1.3b, base 'facebook/opt-1.3b')'."""
        if self.architecture != "opt":
            return (f"a model that is not OPT (its weights are named like '{self.architecture}', OPT's like "
                    f"'model.decoder.layers.0.self_attn.q_proj'){_base(self.base_model)}")
        if not self.hidden_size:
            return f"an OPT model of any size (it adapts no decoder layer){_base(self.base_model)}"
        size = size_for_shape(self.hidden_size, self.num_layers)
        layers = f"at least {self.num_layers}" if self.some_layers else str(self.num_layers)
        named = ", ".join(part for part in (size.name if size else "", _base(self.base_model, bare=True)) if part)
        return f"a model with hidden size {self.hidden_size} and {layers} layers" + (f" ({named})" if named else "")


def _base(base_model: str, bare: bool = False) -> str:
    if not base_model:
        return ""
    return f"base '{base_model}'" if bare else f", base '{base_model}'"


def size_for_shape(hidden_size: int, num_layers: int) -> OPTSize | None:
    """The OPT size with this hidden size and layer count, if one has it."""
    return next((s for s in SIZES.values() if (s.d_model, s.layers) == (hidden_size, num_layers)), None)


def is_adapter(path: str | Path) -> bool:
    """Whether `path` is a folder holding peft's adapter_config.json."""
    try:
        return (Path(path).expanduser() / CONFIG_FILE).is_file()
    except (OSError, ValueError):
        return False


def read_adapter(path: str | Path) -> AdapterInfo:
    """Read a LoRA adapter folder (peft's `save_pretrained`: adapter_config.json and adapter_model.safetensors)
    without loading it: the model it was made for comes from its weights' shapes.

    Raises:
        AdapterError: the folder is missing, is not a LoRA adapter, or its files are incomplete or damaged.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise AdapterError(f"There is no adapter folder at '{path}'. Pass the folder that holds adapter_config.json "
                           "and adapter_model.safetensors (what `finetune` or peft's save_pretrained wrote).")
    if not (folder / CONFIG_FILE).is_file():
        model = (" It is a model folder (it holds config.json): load it as the model, without adapter="
                 if (folder / "config.json").is_file() else "")
        raise AdapterError(f"'{path}' is not a LoRA adapter: it has no {CONFIG_FILE}.{model or ''}"
                           f"{'' if model else ' Pass the folder that `finetune` (or peft save_pretrained) wrote.'}")
    config = _config(folder)
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"'{path}' holds a {peft_type or 'peft'} adapter, not a LoRA adapter: only LoRA adapters "
                           "(peft's LoraConfig, what `finetune` writes) load here.")
    shapes = _weight_shapes(folder)
    hidden, layers, architecture = _shape_facts(folder, shapes)
    targets = config.get("target_modules") or ()
    return AdapterInfo(
        path=folder.resolve(), base_model=str(config.get("base_model_name_or_path") or ""), hidden_size=hidden,
        num_layers=layers, rank=int(config.get("r") or 0),
        target_modules=tuple(sorted([targets] if isinstance(targets, str) else targets)),
        architecture=architecture, some_layers=config.get("layers_to_transform") not in (None, []))


def _config(folder: Path) -> dict:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{folder / CONFIG_FILE} cannot be read as JSON ({exc}): the adapter is damaged. Save it "
                           "again (peft's save_pretrained) or copy the folder again.") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{folder / CONFIG_FILE} is not peft's adapter config (a JSON object): save the adapter "
                           "again.")
    return config


def _weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Each LoRA weight's name and shape, read from the file's header (safetensors) without the values."""
    found = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if found is None:
        raise AdapterError(f"'{folder}' has {CONFIG_FILE} but no {WEIGHT_FILES[0]}: the adapter was not saved "
                           "completely. Save it again, or run finetune again with --resume to finish it.")
    try:
        if found.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(found), framework="pt") as weights:
                shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}  # noqa: SIM118
        else:
            state = torch.load(found, map_location="meta", weights_only=True)
            shapes = {key: tuple(value.shape) for key, value in state.items()}
    except Exception as exc:  # safetensors and torch each raise their own types for a damaged file
        raise AdapterError(f"{found} cannot be read ({exc}): the adapter is damaged or incomplete. Save it again, "
                           "or copy the folder again.") from None
    lora = {key: shape for key, shape in shapes.items() if ".lora_" in key}
    if not lora:
        raise AdapterError(f"{found} holds no LoRA weights (no lora_A/lora_B tensors): it is not a LoRA adapter. "
                           "Pass the folder that `finetune` (or peft save_pretrained) wrote.")
    return lora


def _shape_facts(folder: Path, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int, str]:
    """(hidden size, layers, architecture) from the weights' names and shapes."""
    layers, hidden = set(), set()
    for key, shape in shapes.items():
        match = _OPT_KEY.search(key)
        if match is None or len(shape) != 2:
            continue
        layer, module, half = int(match.group(1)), match.group(2), match.group(3)
        layers.add(layer)
        if half == "A" and module in _IN_IS_HIDDEN:
            hidden.add(shape[1])
        elif half == "B" and module in (*_IN_IS_HIDDEN[:4], "fc2"):
            hidden.add(shape[0])
    if layers and len(hidden) == 1:
        return hidden.pop(), max(layers) + 1, "opt"
    if layers and len(hidden) > 1:
        raise AdapterError(f"The LoRA weights in '{folder}' disagree about the hidden size ({sorted(hidden)}): the "
                           "adapter is damaged. Save it again.")
    if any(".decoder." in key for key in shapes):  # OPT's names, no decoder layer adapted (embeddings, lm_head)
        return 0, 0, "opt"
    other = next(iter(shapes))
    numbers = {int(m.group(1)) for key in shapes for m in [_ANY_LAYER.search(key)] if m}
    width = next((shape[1] for key, shape in shapes.items() if ".lora_A" in key and len(shape) == 2), 0)
    return width, max(numbers) + 1 if numbers else 0, re.sub(r"\.lora_.*", "", other.removeprefix("base_model.model."))


def _model_shape(model) -> tuple[str, int, int, str]:
    """(model type, hidden size, layers, name) of a model, a LoadedModel, a config or an OPTSize."""
    if isinstance(model, OPTSize):
        return "opt", model.d_model, model.layers, model.name
    info = getattr(model, "info", None)
    if info is not None and hasattr(info, "size"):  # a LoadedModel
        return "opt", info.size.d_model, info.size.layers, info.size.name
    config = getattr(model, "config", model)
    kind = str(getattr(config, "model_type", ""))
    if kind != "opt":
        return kind or type(model).__name__, int(getattr(config, "hidden_size", 0) or 0), 0, kind
    size = size_from_config(config)
    known = size_for_shape(size.d_model, size.layers)
    return "opt", size.d_model, size.layers, known.name if known else "a custom OPT"


def check_adapter(info: AdapterInfo, model) -> None:
    """Refuse an adapter made for another size or architecture than `model` (a model, a LoadedModel, a config
    or an OPTSize), saying what it was made for and what to load.

    Raises:
        AdapterError: the shapes or the architecture differ.
    """
    if is_served(model):
        raise AdapterError("A served model runs on its server, so an adapter cannot be applied here: serve the base "
                           f"with vLLM's --enable-lora --lora-modules {info.name}={info.path} instead.")
    kind, hidden, layers, name = _model_shape(model)
    same = (info.architecture == "opt" and kind == "opt" and info.hidden_size in (0, hidden)
            and (info.num_layers <= layers if info.some_layers or not info.hidden_size else info.num_layers == layers))
    if same:
        return
    wanted = size_for_shape(info.hidden_size, info.num_layers)
    load = (f"load {wanted.name} with it" if wanted is not None else
            f"load its base{f' ({info.base_model})' if info.base_model else ''} with it")
    loaded = (f"{name} ({hidden}, {layers} layers)" if kind == "opt" else f"a {kind} model, not OPT")
    raise AdapterError(f"The adapter '{info.name}' does not fit this model: it was made for {info.made_for()}; "
                       f"the loaded model is {loaded}. {load[0].upper()}{load[1:]}.")


def base_model_for(info: AdapterInfo) -> str:
    """The name `load_model` takes for the adapter's base: its folder when it is on this machine, the size for an
    OPT hub id, else the hub id itself when the hub is there.

    Raises:
        AdapterError: the base is none of these here (an old Colab path, a hub model offline): says what to load.
    """
    base = info.base_model
    if base and Path(base).expanduser().is_dir():
        return str(Path(base).expanduser())
    size = find_size(base) if base else None
    if size is None and not base:
        size = size_for_shape(info.hidden_size, info.num_layers) if info.architecture == "opt" else None
    if size is not None:
        return size.name
    why = "it names no base model" if not base else f"its base, '{base}', is not a folder on this machine"
    if base and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", base):  # a hub id, not a path
        from .sources import require_hub

        try:
            require_hub(base)
            return base
        except ModelLoadError as exc:
            why = f"its base, '{base}', is not on this machine and cannot be downloaded ({exc})"
    raise AdapterError(f"The adapter in '{info.path}' cannot be loaded on its own: {why}. It was made for "
                       f"{info.made_for()}. Load that model with the adapter: load_model('BASE_FOLDER_OR_HUB_ID', "
                       f"adapter='{info.path}') (on the command line: --model BASE_FOLDER_OR_HUB_ID --adapter "
                       f"{info.path}).")


def apply_adapter(model, path: str | Path | AdapterInfo):
    """The model with the adapter applied (peft's `PeftModel.from_pretrained`, for inference), after
    `check_adapter`. peft puts the LoRA layers into `model` itself: calling `model` runs the adapter too.

    Raises:
        AdapterError: the adapter is not one, does not fit the model, or the model already has one.
    """
    from peft import PeftModel

    info = path if isinstance(path, AdapterInfo) else read_adapter(path)
    check_adapter(info, model)
    if has_unmerged_adapter(model):
        raise AdapterError("This model already has an adapter applied: load the base model again to apply another "
                           "(or merge the first with merge_adapter).")
    try:
        return PeftModel.from_pretrained(model, str(info.path), is_trainable=False)
    except HelpersError:
        raise
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:  # peft's own refusals (an unsupported layer)
        raise AdapterError(f"peft could not apply the adapter in '{info.path}' to this model: {exc}. Load the model "
                           "unquantized (another plan, or --dtype float32) and try again.") from None


def merge_adapter(model):
    """Merge the adapter into the weights (peft's `merge_and_unload`): a plain model again, which generates the
    adapter's tokens and runs on every backend (the CPU engine's included). `model` is the `PeftModel`."""
    if not hasattr(model, "merge_and_unload"):
        raise AdapterError("merge_adapter takes the PeftModel that apply_adapter returned (or LoadedModel's "
                           "peft_model); this model has no adapter to merge.")
    return model.merge_and_unload()


def find_adapters(folder: str | Path) -> list[AdapterInfo]:
    """The LoRA adapters in `folder` and its sub-folders (one level of nesting under each, as `finetune` writes
    `out/`, not its `checkpoints/`), sorted by path; folders that are not adapters are skipped."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        return []
    found = []
    for config in sorted(root.glob(CONFIG_FILE)) + sorted(root.glob(f"*/{CONFIG_FILE}")) + sorted(
            root.glob(f"*/*/{CONFIG_FILE}")):
        if "checkpoints" in config.relative_to(root).parts or "checkpoint-" in str(config.parent.name):
            continue
        try:
            found.append(read_adapter(config.parent))
        except AdapterError:
            continue
    return found


def adapter_for(name_or_path: str, adapter: str | Path | None) -> tuple[str, AdapterInfo | None]:
    """(the model to load, the adapter to apply) for `load_model(name_or_path, adapter=...)`: an adapter folder
    passed as the model loads its base; an adapter made for another size is refused before any weight loads."""
    if adapter is None:
        if not is_adapter(name_or_path):
            return name_or_path, None
        info = read_adapter(name_or_path)
        return base_model_for(info), info
    if is_server_url(name_or_path):
        raise AdapterError("A served model runs on its server, so an adapter cannot be applied here: serve the base "
                           f"with vLLM's --enable-lora --lora-modules NAME={adapter} instead.")
    info = read_adapter(adapter)
    size = find_size(name_or_path)
    if size is not None:
        check_adapter(info, size)
    return name_or_path, info


def attach_adapter(model, info: AdapterInfo, merge: bool | str = False):
    """(the model, its PeftModel or None once merged): `apply_adapter`, then `merge_adapter` when `merge` is True,
    or 'auto' and the weights are not quantized (merging into 8/4-bit weights would round them)."""
    peft_model = apply_adapter(model, info)
    if merge not in (True, False, "auto"):
        raise AdapterError(f"merge={merge!r}: use True, False or 'auto'.")
    quantized = getattr(model, "hf_quantizer", None) is not None
    if merge is True or (merge == "auto" and not quantized):
        return merge_adapter(peft_model), None
    return model, peft_model
