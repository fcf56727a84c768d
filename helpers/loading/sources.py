"""Where a model comes from: a size, a hub id or a local folder, checked before anything loads."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import ModelLoadError, UnknownModelError
from ..opt.sizes import SIZES, OPTSize, find_size, size_from_config
from .fetch import hub_endpoint, hub_offline, hub_reachable, is_lfs_pointer, lfs_pull_hint, offline_message

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


def cached_snapshot(repo_id: str, revision: str | None) -> str | None:
    """The local snapshot folder of a hub model if its config and weights are already cached."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except Exception:  # not cached (the exception type varies between huggingface_hub versions)
        return None
    has_weights = any(Path(folder).glob("*.safetensors")) or any(Path(folder).glob("*.bin"))
    return folder if has_weights and (Path(folder) / "config.json").is_file() else None


def check_opt_folder(folder: str) -> None:
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
