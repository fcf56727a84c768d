"""FSDP-sharded checkpoint files (OPT-175B's 992): their metadata, and each FSDP instance made whole."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError
from .pages import release
from .parts import Part, place
from .safe_load import load_checkpoint_file, plain

# cfg fields that differ between the ranks of one save (the rest must be equal in every file)
PER_RANK_CFG = {("distributed_training", "distributed_rank"), ("distributed_training", "device_id"),
             ("checkpoint", "checkpoint_suffix"), ("distributed_training", "distributed_port"),
             ("distributed_training", "distributed_init_method")}
_WRAPPERS = ("_fsdp_wrapped_module.", "_fpw_module.")


@dataclass
class Instance:
    """One FSDP instance (the root, or one decoder layer): its flat parameters and what each holds."""

    path: str  # the module it wraps ("" for the root, "decoder.layers.3")
    flats: dict[str, dict]  # flat parameter -> {names, shapes, numels} (full names)
    ties: list[tuple[str, str]]  # (source, tied copy), full names

    def key(self, flat: str) -> str:
        return f"{self.path}.{flat}" if self.path else flat

    def values(self) -> int:
        return sum(sum(meta["numels"]) for meta in self.flats.values())


@dataclass
class ShardFile:
    """What one file says about itself, read without its tensors' data."""

    path: Path
    part: int
    shard: int
    instances: list[Instance]
    padding: dict[str, int]  # flat parameter key -> trailing zeros in this file's piece
    stored: dict[str, int]  # flat parameter key -> values in this file's piece
    dtypes: dict[str, torch.dtype]
    buffers: list[str]
    cfg: dict | None
    updates: object
    has_optimizer_state: bool
    tensors: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)  # memory-mapped, read on demand


@dataclass
class ShardedCheckpoint:
    """All the files of one save: `files[part][shard]`, checked to fit together."""

    files: list[list[ShardFile]]
    notes: list[str] = field(default_factory=list)

    @property
    def instances(self) -> list[Instance]:
        return self.files[0][0].instances

    def all_files(self) -> list[ShardFile]:
        return [f for part in self.files for f in part]

    def meta_parts(self) -> list[Part]:
        """Each model part as a `Part` of meta tensors (shapes and dtypes, no data), for the architecture and
        shape checks the other layouts go through."""
        parts = []
        for shard_files in self.files:
            first = shard_files[0]
            state: dict[str, torch.Tensor] = {}
            for inst in first.instances:
                for flat, meta in inst.flats.items():
                    dtype = first.dtypes[inst.key(flat)]
                    state.update({n: torch.empty(s, dtype=dtype, device="meta")
                                  for n, s in zip(meta["names"], meta["shapes"])})
                for source, copy in inst.ties:
                    if source in state:
                        state[copy] = state[source]
            for name in first.buffers:
                state[name] = torch.empty(1, device="meta")
            parts.append(Part(path=first.path, state=state, cfg=first.cfg, flattened=False,
                              has_version="decoder.version" in first.buffers))
        return parts

    def read_instance(self, index: int, part: int, on_read: Callable[[int], None]) -> dict[str, torch.Tensor]:
        """One FSDP instance of one model part, whole: each shard's piece (padding stripped) joined in shard
        order, then cut by `numels` and shaped by `shapes`; ties and (for the root) buffers added. The files
        are memory-mapped (each unpickled once) and only this instance's bytes are read, their pages given
        back once copied: what stays in memory is this instance, not the files."""
        files = self.files[part]
        inst = files[0].instances[index]
        buffers = {key: torch.empty(sum(meta["numels"]), dtype=files[0].dtypes[inst.key(key)])
                   for key, meta in inst.flats.items()}
        offsets = dict.fromkeys(buffers, 0)
        extra: dict[str, torch.Tensor] = {}
        for shard in files:
            for flat in inst.flats:
                key = inst.key(flat)
                valid = shard.stored[key] - shard.padding[key]
                piece = shard.tensors[key]
                buffers[flat].narrow(0, offsets[flat], valid).copy_(piece.narrow(0, 0, valid))
                release(piece)  # read once: its pages need not stay resident
                offsets[flat] += valid
                on_read(valid * buffers[flat].element_size())
            if index == 0 and shard is files[0]:
                extra = {name: shard.tensors[name].clone() for name in shard.buffers if name in shard.tensors}
        out: dict[str, torch.Tensor] = {}
        for flat, meta in inst.flats.items():
            start = 0
            for name, shape, n in zip(meta["names"], meta["shapes"], meta["numels"]):
                out[name] = buffers[flat].narrow(0, start, n).view(shape)
                start += n
        for source, copy in inst.ties:
            if source in out:
                out[copy] = out[source]
        out.update(extra)
        return out


def _full(path: str, name: str) -> str:
    for wrapper in _WRAPPERS:
        name = name.replace(wrapper, "")
    return f"{path}.{name}" if path else name


def _instances(metadata: dict, where: Path) -> list[Instance]:
    instances = []
    try:
        for entry in metadata["param_metadata"]:
            path = entry.get("fsdp_path", "")
            for wrapper in _WRAPPERS:
                path = path.replace(wrapper, "").replace(wrapper.rstrip("."), "")
            path = path.strip(".")
            flats = {}
            for flat, meta in entry["params"].items():
                shapes = [tuple(int(x) for x in s) for s in meta["shapes"]]
                numels = [int(n) for n in meta["numels"]]
                if len(shapes) != len(numels) or len(meta["names"]) != len(numels):
                    raise ValueError("names, shapes and numels differ in length")
                flats[flat] = {"names": [_full(path, n) for n in meta["names"]], "shapes": shapes, "numels": numels}
            ties = [(_full(path, a), _full(path, b)) for a, b in entry.get("shared_param_info", [])]
            instances.append(Instance(path, flats, ties))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{where}: its shard_metadata cannot be read ({exc}): the file is damaged or not an "
                              "FSDP-sharded metaseq checkpoint. Fetch it again.") from None
    return instances


def read_shard_file(path: Path) -> ShardFile:
    """Read one file's metadata; its weights stay mapped, unread (optimizer state and the rest dropped).

    Raises:
        CheckpointError: unreadable, or not an FSDP-sharded metaseq checkpoint file.
    """
    raw = load_checkpoint_file(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise CheckpointError(f"{path} is not a metaseq training checkpoint (no 'model' dict of weights). Fetch the "
                              "original file again.")
    metadata = raw.get("shard_metadata")
    if not isinstance(metadata, dict):
        raise CheckpointError(
            f"{path} has no shard_metadata, which says how FSDP cut the weights into shards, so its shards cannot "
            "be put back together. It was not saved by metaseq with --use-sharded-state, or was altered: fetch the "
            "original file, or convert a consolidated checkpoint (reshard-model_part-K.pt) instead."
        )
    model = raw["model"]
    instances = _instances(metadata, path)
    padding, stored, dtypes = {}, {}, {}
    for inst, entry in zip(instances, metadata["param_metadata"]):
        for flat in inst.flats:
            key = inst.key(flat)
            tensor = model.get(key)
            if not isinstance(tensor, torch.Tensor) or tensor.dim() != 1:
                raise CheckpointError(f"{path} lacks the flat parameter {key} its shard_metadata names: the file is "
                                      "damaged. Fetch it again.")
            padding[key] = int(entry["params"][flat].get("padding", 0) or 0)
            stored[key], dtypes[key] = tensor.numel(), tensor.dtype
    cfg = plain(raw.get("cfg") or raw.get("args"))
    history = raw.get("optimizer_history")
    updates = history[-1].get("num_updates") if isinstance(history, list) and history and isinstance(history[-1], dict) else None
    buffers = [b for b in metadata.get("buffer_names", []) if isinstance(b, str)]
    part, shard = place(path)
    tensors = {k: v for k, v in model.items() if isinstance(v, torch.Tensor)}
    return ShardFile(path=path, part=part, shard=shard, instances=instances, padding=padding, stored=stored,
                     dtypes=dtypes, buffers=buffers, cfg=cfg if isinstance(cfg, dict) else None, updates=updates,
                     has_optimizer_state="last_optimizer_state" in raw, tensors=tensors)
