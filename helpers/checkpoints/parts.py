"""Which files make up a checkpoint (a single file, or reshard-model_part-K.pt parts), and reading each one."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from .safe_load import load_checkpoint_file, plain

_PART = re.compile(r"^(?P<prefix>.*?)-?model_part-(?P<part>\d+)(?:-shard(?P<shard>\d+))?\.pt$")
SHARD = re.compile(r"^(?P<prefix>.*?)(?:-model_part-(?P<part>\d+))?-shard(?P<shard>\d+)\.pt$")  # FSDP-sharded
_SINGLETONS = ("restored.pt", "reshard.pt", "consolidated.pt", "checkpoint_last.pt", "checkpoint_best.pt")


def find_parts(src: str | Path | list) -> list[Path]:
    """The checkpoint files to read for `src`: a file (with its sibling model-parallel parts), a folder, or
    the files of an FSDP-sharded checkpoint; parts in order (shards: part by part, shard by shard). Whether
    they are all the parts is decided from their tensors (see `convert`).

    Raises:
        CheckpointError: nothing found, several candidates, a gap or a duplicate in the part numbers, or
            one FSDP shard on its own.
    """
    if isinstance(src, (list, tuple)):
        return _given_files([Path(p).expanduser() for p in src])
    src = Path(src).expanduser()
    if not src.exists():
        raise CheckpointError(f"{src} does not exist.")
    if src.is_file():
        if SHARD.match(src.name):
            _lone_shard(src)
        match = _PART.match(src.name)
        candidates = [src] if match is None else [p for p in src.parent.iterdir() if _same_set(p, match)]
    else:
        files = [p for p in sorted(src.rglob("*.pt")) if ".git" not in p.parts]
        shards = [p for p in files if SHARD.match(p.name)]
        if shards:
            return _one_set_of_shards(src, shards)
        parted = [p for p in files if _PART.match(p.name)]
        if parted:
            prefixes = {(p.parent, _PART.match(p.name)["prefix"]) for p in parted}
            if len(prefixes) > 1:
                listing = ", ".join(sorted(str(p) for p in parted)[:6])
                raise CheckpointError(f"{src} holds more than one set of parts ({listing}, ...): pass one part file.")
            candidates = parted
        else:
            singles = [p for p in files if p.name in _SINGLETONS] or files
            if not singles:
                raise CheckpointError(f"{src} holds no checkpoint (*.pt) files.")
            if len(singles) > 1:
                listing = ", ".join(str(p) for p in singles[:6])
                raise CheckpointError(f"{src} holds several checkpoints ({listing}): pass the file to convert.")
            candidates = singles
    if len(candidates) == 1 and not _PART.match(candidates[0].name):
        return candidates
    return _numbered(candidates)


def place(path: Path) -> tuple[int, int]:
    """(model-parallel part, data-parallel shard) from a shard file's name."""
    match = SHARD.match(path.name)
    return int(match["part"] or 0), int(match["shard"])


def is_sharded(paths: list[Path]) -> bool:
    """Whether `paths` are the files of an FSDP-sharded checkpoint (`*-shardD.pt`)."""
    return bool(paths) and all(SHARD.match(p.name) for p in paths)


def _lone_shard(path: Path) -> None:
    siblings = [p for p in path.parent.iterdir() if SHARD.match(p.name)]
    found = f" ({len(siblings)} such files are in {path.parent})" if len(siblings) > 1 else ""
    raise CheckpointError(
        f"{path} is one FSDP shard of a sharded checkpoint: it holds a slice of every weight, not a model{found}. "
        f"Pass the folder that holds all of its shards: python -m helpers convert-metaseq {path.parent} --out OUT"
    )


def _one_set_of_shards(src: Path, shards: list[Path]) -> list[Path]:
    sets = {(p.parent, SHARD.match(p.name)["prefix"]) for p in shards}
    if len(sets) > 1:
        listing = ", ".join(sorted(str(p) for p in shards)[:6])
        raise CheckpointError(f"{src} holds the shards of more than one checkpoint ({listing}, ...): move each "
                              "checkpoint's files to a folder of its own and pass that folder.")
    return sorted(shards, key=place)


def _given_files(paths: list[Path]) -> list[Path]:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise CheckpointError(f"{missing[0]} does not exist (or is not a file).")
    if len(paths) == 1:
        return find_parts(paths[0])
    if not is_sharded(paths):
        raise CheckpointError("Several files were given, but they are not the shards of one FSDP-sharded checkpoint "
                              "(*-model_part-K-shardD.pt): pass one checkpoint file, or the folder that holds it.")
    return _one_set_of_shards(paths[0].parent, paths)


def _numbered(candidates: list[Path]) -> list[Path]:
    by_number: dict[int, list[Path]] = {}
    for path in candidates:
        by_number.setdefault(int(_PART.match(path.name)["part"]), []).append(path)
    duplicated = {k: v for k, v in by_number.items() if len(v) > 1}
    if duplicated:
        number, paths = min(duplicated.items())
        raise CheckpointError(
            f"Model-parallel part {number} is there twice ({', '.join(sorted(p.name for p in paths))} in "
            f"{paths[0].parent}): keep the one that belongs to this checkpoint and move the other away."
        )
    found = sorted(by_number)
    missing = sorted(set(range(found[-1] + 1)) - set(found))
    if missing:
        raise CheckpointError(
            f"Model-parallel part(s) {', '.join(map(str, missing))} missing: found parts {found} in "
            f"{candidates[0].parent}. Every part is needed; fetch the missing file(s)."
        )
    return [by_number[k][0] for k in found]


def _same_set(path: Path, match: re.Match) -> bool:
    other = _PART.match(path.name)
    return bool(other) and other["prefix"] == match["prefix"] and other["shard"] == match["shard"]


@dataclass
class Part:
    """One checkpoint file: its weights under metaseq's names, and its cfg as plain dicts."""

    path: Path
    state: dict[str, torch.Tensor]
    cfg: dict | None
    flattened: bool
    has_version: bool

    @property
    def name(self) -> str:
        return self.path.name


def read_part(path: Path) -> Part:
    """Read one checkpoint file (safely, see `load_checkpoint_file`) into a `Part`.

    Raises:
        CheckpointError: not a metaseq OPT checkpoint, or already in Hugging Face's layout.
    """
    raw = load_checkpoint_file(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not a metaseq checkpoint (a dict of weights).")
    if "model" in raw and isinstance(raw["model"], dict):
        state, cfg = raw["model"], plain(raw.get("cfg") or raw.get("args"))
    else:
        state, cfg = raw, None
    keys = [k for k in state if isinstance(k, str)]
    if any(k.startswith("model.decoder.") or k == "lm_head.weight" for k in keys):
        raise CheckpointError(
            f"{path} is already in Hugging Face's layout (model.decoder.*): put it in a folder with its config.json "
            "and load the folder with load_model; it needs no conversion."
        )
    flattened = any(k == "flat_param_0" or k.endswith(".flat_param_0") for k in keys)
    if not flattened and not any(k.startswith("decoder.") for k in keys):
        shown = ", ".join(keys[:5]) or "none"
        raise CheckpointError(f"{path} is not a metaseq OPT checkpoint: its keys ({shown}, ...) are not decoder.* weights.")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return Part(path=path, state=tensors, cfg=cfg if isinstance(cfg, dict) else None, flattened=flattened,
                has_version="decoder.version" in tensors)
