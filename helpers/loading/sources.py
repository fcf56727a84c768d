"""Where a model comes from: a size, a hub id or a local folder, checked before anything loads."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

from ..errors import ModelLoadError, UnknownModelError
from ..opt.sizes import SIZES, OPTSize, find_size, size_from_config
from .fetch import hub_endpoint, hub_offline, hub_reachable, is_lfs_pointer, lfs_pull_hint, offline_message

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Names from_pretrained may open in a model folder (weights, their index, config, tokenizer files)
_READ_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".jinja")
# The JSON files a load reads: at most how big (a config is under 1 KB; more is another file renamed) and what
# the one JSON object each holds is of
_JSON_FILES = {"config.json": (1 << 20, 'its settings, e.g. {"model_type": "opt", "hidden_size": 768, ...}'),
               "generation_config.json": (1 << 20, "generation defaults"),
               "tokenizer_config.json": (64 << 20, "tokenizer settings"),
               "special_tokens_map.json": (64 << 20, "special tokens"),
               "added_tokens.json": (64 << 20, "added tokens"),
               "tokenizer.json": (256 << 20, "the tokenizer's vocabulary and rules"),
               "vocab.json": (256 << 20, "the vocabulary"),
               "model.safetensors.index.json": (256 << 20, "which weights are in which file"),
               "pytorch_model.bin.index.json": (256 << 20, "which weights are in which file")}
_ARCHITECTURE_FIELDS = ("num_hidden_layers", "num_attention_heads", "hidden_size", "ffn_dim", "word_embed_proj_dim",
                        "vocab_size", "max_position_embeddings")


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
    _check_reachable(name, path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            checkpoints = metaseq_files(path)
            hint = (
                f" It holds metaseq checkpoint files ({', '.join(checkpoints[:3])}"
                f"{f' and {len(checkpoints) - 3} more' if len(checkpoints) > 3 else ''}): convert them first with "
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
    if path.exists():  # neither a file nor a folder: a FIFO, a socket, a device
        raise ModelLoadError(f"'{name}' is {_not_regular(path)}, not a model folder: pass the folder that holds "
                             "config.json and the weights.")
    if _looks_like_path(name) or path.suffix in (".pt", ".bin", ".safetensors"):
        raise ModelLoadError(
            f"The folder '{name}' does not exist. Check the path (relative paths start from "
            f"{os.getcwd()}), or pass a short name such as 'opt-350m' to download from the Hugging Face Hub."
        )
    size = find_size(name)
    if size is not None and not size.on_hub:
        raise UnknownModelError(
            f"{size.name} is not on the Hugging Face Hub, so it cannot be loaded by name. Pass a short name of one "
            f"that is ({', '.join(SIZES)}), or the local folder that python -m helpers convert-metaseq writes from "
            "Meta's release (docs/opt-175b.md).")
    if size is not None and "/" not in name:
        return size.hub_id, False
    if _HUB_ID.match(name):
        return name, False
    raise UnknownModelError(
        f"'{name}' is not a model this can load. Pass a short name ({', '.join(SIZES)}), a Hugging Face hub "
        "id such as 'facebook/opt-350m', or a local folder holding config.json and the weights."
    )


def _check_reachable(name: str, path: Path) -> None:
    """A symlink loop, or a link to nothing, is named as such (not as a folder that does not exist)."""
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModelLoadError(f"'{name}' is a symbolic link loop (it leads back to itself), not a folder: "
                                 "point --model at the model folder itself.") from None
        if exc.errno == errno.EACCES:
            raise ModelLoadError(f"'{name}' cannot be opened: permission denied. Make it readable by this user "
                                 f"(`chmod -R u+rX {name}`), or copy the model folder somewhere you can read.") from None
        if path.is_symlink():
            raise ModelLoadError(f"'{name}' is a symbolic link to '{os.readlink(path)}', which does not exist: "
                                 "fix the link or pass the model folder itself.") from None


def metaseq_files(folder: Path) -> list[str]:
    """The *.pt files in a folder and in its subfolders one level down (where a metaseq release keeps
    them, e.g. model/restored.pt), relative to it, each once: never a walk of everything below it."""
    found = []
    for pattern in ("*.pt", "*/*.pt"):
        found += [p.relative_to(folder).as_posix() for p in folder.glob(pattern)
                  if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(set(found))


def cached_snapshot(repo_id: str, revision: str | None) -> str | None:
    """The local snapshot folder of a hub model if its config and weights are already cached."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except Exception:  # not cached (the exception type varies between huggingface_hub versions)
        return None
    has_weights = any(Path(folder).glob("*.safetensors")) or any(Path(folder).glob("*.bin"))
    return folder if has_weights and (Path(folder) / "config.json").is_file() else None


def _not_regular(path: Path) -> str | None:
    """What a path that a load would open is, when it is not a regular file (a FIFO would block forever)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if path.is_symlink():
            return f"a symbolic link to '{os.readlink(path)}', which cannot be followed ({exc.strerror})"
        return f"unreadable ({exc.strerror})"
    kinds = {stat.S_ISFIFO: "a named pipe (FIFO)", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device", stat.S_ISDIR: "a folder"}
    return next((what for test, what in kinds.items() if test(mode)), None)


def _json_object(path: Path, max_bytes: int, holds: str) -> dict:
    """A model file that must hold one JSON object (`holds` says what of), refused by name otherwise."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelLoadError(f"{path} is {size:,} bytes, not a model's {path.name} (a JSON object of {holds}): "
                             "another file was saved under that name. Re-download or re-convert the model.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ModelLoadError(f"{path} is not text (binary data: another file saved under that name?). "
                             "Re-download or re-convert the model.") from None
    try:
        data = json.loads(text)
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ModelLoadError(f"{path} is not valid JSON ({exc}). Re-download or re-convert the model.") from None
    if not isinstance(data, dict):
        kinds = {list: "a JSON list", str: "a JSON string", bool: "true or false", int: "a number", float: "a number"}
        raise ModelLoadError(f"{path} holds {kinds.get(type(data), 'null')} ({json.dumps(data)[:40]}), but a model's "
                             f"{path.name} holds one JSON object of {holds}. Re-download or re-convert the model.")
    return data


def _check_architecture(path: Path, config: dict) -> None:
    """The sizes config.json gives are whole numbers above 0, and the width splits evenly into the heads."""
    bad = [f"{key} = {json.dumps(config[key])}" for key in _ARCHITECTURE_FIELDS
           if key in config and not (type(config[key]) is int and config[key] > 0)]
    if bad:
        raise ModelLoadError(f"{path} has {', '.join(bad)}, but each of these sizes is a whole number above 0 (e.g. "
                             "\"num_hidden_layers\": 12). Re-download or re-convert the model, or fix config.json.")
    width, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if width and heads and width % heads:
        raise ModelLoadError(f"{path} has hidden_size = {width}, which {heads} attention heads cannot share evenly "
                             "(it must be a multiple of num_attention_heads). Re-download or re-convert the model.")


def check_opt_folder(folder: str) -> None:
    """Refuse, before anything loads, a folder whose config is not an OPT config, which has no weights,
    whose weights are LFS pointers, or where a file the load would open is not a regular file."""
    for entry in sorted(Path(folder).iterdir()):
        what = _not_regular(entry) if entry.suffix in _READ_SUFFIXES else None
        if what is not None:
            raise ModelLoadError(f"{entry} is {what}, not a regular file, so the model cannot be read from it. "
                                 "Replace it with the real file (re-download or re-convert the model).")
    for name, (max_bytes, holds) in _JSON_FILES.items():
        if (Path(folder) / name).exists():
            _json_object(Path(folder) / name, max_bytes, holds)
    config_path = Path(folder) / "config.json"
    config = _json_object(config_path, *_JSON_FILES["config.json"])
    if config.get("model_type") != "opt":
        raise ModelLoadError(
            f"{folder} holds a '{config.get('model_type')}' model, not OPT. This project loads OPT models only."
        )
    _check_architecture(config_path, config)
    weights = [p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin")]
    if not weights:
        raise ModelLoadError(
            f"{folder} has a config.json but no weights (*.safetensors or *.bin). If it is a git clone, run "
            f"`git lfs install && git lfs pull` in {folder}; otherwise copy the weight files into it."
        )
    for weight in weights:
        if is_lfs_pointer(weight):
            raise ModelLoadError(lfs_pull_hint(weight))


def require_hub(repo_id: str) -> None:
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
        check_opt_folder(source)
    elif cached_snapshot(source, None) is None:
        require_hub(source)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local)
    except Exception as exc:  # the hub client and the config parser raise their own types
        if local:
            raise ModelLoadError(f"{source}/config.json cannot be read as an OPT config ({exc}).") from None
        raise ModelLoadError(offline_message(source, f"its config could not be fetched ({exc})")) from None
    return size_from_config(config, name=Path(source).name)
