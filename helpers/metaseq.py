"""Read original metaseq OPT checkpoints (single files, FSDP-flattened parts, model-parallel parts) without
metaseq, Megatron-LM or fairscale, and convert them to a Hugging Face folder.

Written by hand because no library reads these formats any more: metaseq's own tools need the
metaseq/Megatron/fairscale stack (which no longer installs) and several GPUs; this runs on a CPU.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import pickle
import re
import shutil
import typing
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import CheckpointError, UnsafeCheckpointError
from .fetch import check_not_lfs_pointer
from .models import MAX_POSITIONS, POSITION_OFFSET, VOCAB_SIZE, get_size, opt_config

# ------------------------------------------------------------------------------------------ safe loading


class _PickledState:
    """Stand-in for a class a metaseq `cfg` pickles (omegaconf's containers and nodes): unpickling only
    stores the pickled attributes in `__dict__`; no code of the original class exists or runs."""


class _OmegaDict(_PickledState):
    pass


class _OmegaList(_PickledState):
    pass


class _OmegaNode(_PickledState):
    pass


class _OmegaMetadata(_PickledState):
    pass


def _numpy_globals() -> list:
    """numpy scalars (a training run's `best_loss`, say) are data too: their rebuild functions are safe."""
    import numpy

    multiarray = numpy._core.multiarray if hasattr(numpy, "_core") else numpy.core.multiarray
    allowed = [(numpy.dtype, "numpy.dtype"), (multiarray.scalar, "numpy.core.multiarray.scalar"),
               (multiarray.scalar, "numpy._core.multiarray.scalar")]
    dtypes = getattr(numpy, "dtypes", None)
    if dtypes is not None:
        allowed += [(getattr(dtypes, name), f"numpy.dtypes.{name}") for name in dir(dtypes) if name.endswith("DType")]
    return allowed


def _allowed_globals() -> list:
    """Everything a metaseq checkpoint may name besides tensors: argparse.Namespace, plain Python types,
    and omegaconf's classes mapped to inert stand-ins (so omegaconf need not be installed)."""
    omegaconf = [(_OmegaDict, "omegaconf.dictconfig.DictConfig"), (_OmegaList, "omegaconf.listconfig.ListConfig"),
                 (_OmegaMetadata, "omegaconf.base.ContainerMetadata"), (_OmegaMetadata, "omegaconf.base.Metadata")]
    omegaconf += [(_OmegaNode, f"omegaconf.nodes.{name}") for name in (
        "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode", "ValueNode",
        "UnionNode", "EnumNode")]
    plain = [argparse.Namespace, collections.defaultdict, collections.OrderedDict, typing.Any,
             dict, list, tuple, set, frozenset, int, float, bool, str, bytes, complex,
             pathlib.PosixPath, pathlib.PurePosixPath]
    return plain + omegaconf + _numpy_globals()


def _plain(value):
    """A cfg as plain dicts and lists (Namespaces and omegaconf containers unwrapped)."""
    if isinstance(value, _OmegaDict):
        content = value.__dict__.get("_content")
        return {k: _plain(v) for k, v in content.items()} if isinstance(content, dict) else content
    if isinstance(value, _OmegaList):
        content = value.__dict__.get("_content")
        return [_plain(v) for v in content] if isinstance(content, list) else content
    if isinstance(value, _OmegaNode):
        return _plain(value.__dict__.get("_val"))
    if isinstance(value, argparse.Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_checkpoint_file(path: str | Path) -> dict:
    """`torch.load` of one checkpoint file with `weights_only=True` and an explicit allow-list: tensors,
    argparse.Namespace and what a metaseq `cfg` holds. Any other pickled global is refused before it can run.

    Raises:
        UnsafeCheckpointError: the file names a global outside the allow-list (nothing was executed).
        CheckpointError: missing, empty, an LFS pointer, truncated or not a PyTorch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): its download or copy was interrupted. Fetch it again.")
    check_not_lfs_pointer(path)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":  # torch.save's zip archive, or a legacy pickle
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (it starts with {magic!r}).")
    with torch.serialization.safe_globals(_allowed_globals()):
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # pre-zip format: no mmap
        except pickle.UnpicklingError as exc:
            message = str(exc)
            name = re.search(r"GLOBAL (\S+)|function (\S+)|got (<class '[^']+'>)", message)
            if name or "allowlisted" in message or "blocked" in message:
                what = next((g for g in name.groups() if g), "a global") if name else "a global"
                raise UnsafeCheckpointError(
                    f"{path} asks to run code when loaded ({what}), which a metaseq checkpoint never needs: it holds "
                    "only tensors and its configuration. Loading was refused and nothing in it was executed. "
                    "Use the original file from its publisher."
                ) from None
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({exc}).") from None
        except MemoryError:
            raise
        except Exception as exc:  # the unpickler and the zip reader fail in many ways on damaged files
            raise CheckpointError(
                f"{path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). It is probably "
                "truncated or damaged (an interrupted download?): fetch it again."
            ) from None


# ------------------------------------------------------------------------------------------ finding parts

_PART = re.compile(r"^(?P<prefix>.*?)-?model_part-(?P<part>\d+)(?:-shard(?P<shard>\d+))?\.pt$")
_SINGLETONS = ("restored.pt", "reshard.pt", "consolidated.pt", "checkpoint_last.pt", "checkpoint_best.pt")


def find_parts(src: str | Path) -> list[Path]:
    """The checkpoint files to read for `src`: a file (with its sibling model-parallel parts) or a folder.

    Raises:
        CheckpointError: nothing found, several candidates, missing parts, or FSDP data-parallel shards.
    """
    src = Path(src).expanduser()
    if not src.exists():
        raise CheckpointError(f"{src} does not exist.")
    if src.is_file():
        match = _PART.match(src.name)
        candidates = [src] if match is None else [p for p in src.parent.iterdir() if _same_set(p, match)]
    else:
        files = [p for p in sorted(src.rglob("*.pt")) if ".git" not in p.parts]
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
    if any(_PART.match(p.name) and _PART.match(p.name)["shard"] is not None for p in candidates):
        raise CheckpointError(
            "These are FSDP data-parallel shards (*-shardN.pt), which need merging across data-parallel ranks "
            "first; convert the 'reshard' release files (reshard-model_part-K.pt) instead."
        )
    if len(candidates) == 1 and not _PART.match(candidates[0].name):
        return candidates
    numbered = sorted(candidates, key=lambda p: int(_PART.match(p.name)["part"]))
    found = [int(_PART.match(p.name)["part"]) for p in numbered]
    missing = sorted(set(range(max(found) + 1)) - set(found))
    if missing:
        raise CheckpointError(
            f"Model-parallel part(s) {', '.join(map(str, missing))} missing: found parts {found} in "
            f"{numbered[0].parent}. Every part is needed; fetch the missing file(s)."
        )
    return numbered


def _same_set(path: Path, match: re.Match) -> bool:
    other = _PART.match(path.name)
    return bool(other) and other["prefix"] == match["prefix"] and other["shard"] == match["shard"]


# ------------------------------------------------------------------------------------------ architecture


@dataclass
class Architecture:
    """What the weights need to be laid out: read from `cfg`, the weight shapes, `--size` or `--num-heads`."""

    layers: int
    d_model: int
    ffn: int
    heads: int | None
    word_embed_proj_dim: int
    pre_layer_norm: bool
    vocab_size: int | None
    max_positions: int = MAX_POSITIONS

    def describe(self) -> str:
        heads = self.heads if self.heads is not None else "?"
        return (f"{self.layers} layers, d_model {self.d_model}, ffn {self.ffn}, {heads} heads, embeddings "
                f"{self.word_embed_proj_dim}, {'pre' if self.pre_layer_norm else 'post'} layer norm")


def _cfg_model(cfg: dict | None) -> dict:
    if not cfg:
        return {}
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else None
    return model or (cfg.get("args") if isinstance(cfg.get("args"), dict) else {}) or {}


def _cfg_model_parallel(cfg: dict | None) -> int | None:
    if not cfg:
        return None
    for section in ("common", "model", "distributed_training", "args"):
        value = (cfg.get(section) or {}).get("model_parallel_size") if isinstance(cfg.get(section), dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def architecture_from_cfg(cfg: dict | None) -> Architecture | None:
    model = _cfg_model(cfg)
    needed = ("decoder_layers", "decoder_embed_dim", "decoder_ffn_embed_dim")
    if not all(isinstance(model.get(k), int) for k in needed):
        return None
    d = model["decoder_embed_dim"]
    heads = model.get("decoder_attention_heads")
    return Architecture(
        layers=model["decoder_layers"], d_model=d, ffn=model["decoder_ffn_embed_dim"],
        heads=heads if isinstance(heads, int) else None,
        word_embed_proj_dim=model.get("decoder_input_dim") or d,
        pre_layer_norm=bool(model.get("decoder_normalize_before", True)),
        vocab_size=None, max_positions=model.get("max_target_positions") or MAX_POSITIONS,
    )


def architecture_from_size(name: str) -> Architecture:
    size = get_size(name)
    return Architecture(size.layers, size.d_model, size.ffn, size.heads, size.word_embed_proj_dim,
                        size.pre_layer_norm, size.vocab_size, size.max_positions)


def architecture_from_weights(state: dict[str, torch.Tensor], parts: int) -> Architecture:
    """Everything but the head count, from an unflattened state dict (one model-parallel part)."""
    try:
        embed = state["decoder.embed_tokens.weight"]
        positions = state["decoder.embed_positions.weight"]
        layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("decoder.layers."))
        fc1 = state["decoder.layers.0.fc1.weight"]
    except (KeyError, ValueError):
        raise CheckpointError(
            "The checkpoint lacks OPT decoder weights (decoder.embed_tokens, decoder.embed_positions, "
            "decoder.layers.N.fc1): it is not an OPT checkpoint."
        ) from None
    return Architecture(
        layers=layers, d_model=positions.shape[1], ffn=fc1.shape[0] * parts, heads=None,
        word_embed_proj_dim=embed.shape[1], pre_layer_norm="decoder.layer_norm.weight" in state,
        vocab_size=embed.shape[0] * parts, max_positions=positions.shape[0] - POSITION_OFFSET,
    )


# ------------------------------------------------------------------------------------------ layouts


def _top_shapes(a: Architecture, parts: int, vocab_rows: int) -> list[tuple[str, tuple[int, ...]]]:
    d, p = a.d_model, a.word_embed_proj_dim
    shapes = [("decoder.embed_tokens.weight", (vocab_rows, p))]
    if p != d:
        shapes.append(("decoder.project_in_dim.weight", (d, p)))
    shapes.append(("decoder.embed_positions.weight", (a.max_positions + POSITION_OFFSET, d)))
    if a.pre_layer_norm:
        shapes += [("decoder.layer_norm.weight", (d,)), ("decoder.layer_norm.bias", (d,))]
    if p != d:
        shapes.append(("decoder.project_out_dim.weight", (p, d)))
    return shapes


def _layer_shapes(a: Architecture, parts: int, fused: bool) -> list[tuple[str, tuple[int, ...]]]:
    d, f = a.d_model, a.ffn
    if fused:
        shapes = [("self_attn.qkv_proj.weight", (3 * d // parts, d)), ("self_attn.qkv_proj.bias", (3 * d // parts,))]
    else:
        shapes = []
        for proj in ("k_proj", "v_proj", "q_proj"):
            shapes += [(f"self_attn.{proj}.weight", (d // parts, d)), (f"self_attn.{proj}.bias", (d // parts,))]
    return shapes + [
        ("self_attn.out_proj.weight", (d, d // parts)), ("self_attn.out_proj.bias", (d,)),
        ("self_attn_layer_norm.weight", (d,)), ("self_attn_layer_norm.bias", (d,)),
        ("fc1.weight", (f // parts, d)), ("fc1.bias", (f // parts,)),
        ("fc2.weight", (d, f // parts)), ("fc2.bias", (d,)),
        ("final_layer_norm.weight", (d,)), ("final_layer_norm.bias", (d,)),
    ]


def _check_vocabulary(rows: int, parts: int) -> None:
    """Every OPT has 50272 embedding rows; model-parallel parts each hold a contiguous block of them."""
    if rows != VOCAB_SIZE:
        raise CheckpointError(
            f"The embedding rows add up to {rows:,} over {parts} part(s), not OPT's {VOCAB_SIZE:,}: a model-parallel "
            "part is missing or extra, or the architecture (--size) is wrong."
        )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _split_flat(flat: torch.Tensor, shapes: list[tuple[str, tuple[int, ...]]], where: str,
                a: Architecture) -> dict[str, torch.Tensor]:
    """Cut a flat FSDP parameter into the named tensors, checking the pieces add up exactly."""
    need = sum(_numel(s) for _, s in shapes)
    if flat.dim() != 1 or flat.numel() != need:
        raise CheckpointError(
            f"{where} holds {flat.numel():,} values but {a.describe()} needs {need:,}: the architecture does not "
            "match this checkpoint (check --size), a model-parallel part is missing or extra, or the file is damaged."
        )
    out, offset = {}, 0
    for name, shape in shapes:
        n = _numel(shape)
        out[name] = flat.narrow(0, offset, n).view(shape)
        offset += n
    return out


# ------------------------------------------------------------------------------------------ one part


@dataclass
class Part:
    """One checkpoint file: its weights under metaseq's names, and its cfg as plain dicts."""

    path: Path
    state: dict[str, torch.Tensor]
    cfg: dict | None
    flattened: bool
    has_version: bool

    @property
    def fused_qkv(self) -> bool:
        return any(".qkv_proj." in k for k in self.state)


def read_part(path: Path) -> Part:
    raw = load_checkpoint_file(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not a metaseq checkpoint (a dict of weights).")
    if "model" in raw and isinstance(raw["model"], dict):
        state, cfg = raw["model"], _plain(raw.get("cfg") or raw.get("args"))
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


def _unflatten(part: Part, a: Architecture, parts: int) -> dict[str, torch.Tensor]:
    """Named tensors of one FSDP-flattened part (model-parallel parts hold a fused qkv_proj)."""
    fused = parts > 1
    top = part.state.get("flat_param_0")
    if top is None:
        raise CheckpointError(f"{part.path} has per-layer flat parameters but no top-level flat_param_0: it is damaged.")
    layer_shapes = _layer_shapes(a, parts, fused)
    rest = sum(_numel(s) for n, s in _top_shapes(a, parts, 0))
    vocab_rows, remainder = divmod(top.numel() - rest, a.word_embed_proj_dim)
    if remainder or vocab_rows <= 0:
        raise CheckpointError(
            f"{part.path}: the top-level flat parameter ({top.numel():,} values) does not fit {a.describe()} "
            "with any vocabulary: the architecture does not match (check --size)."
        )
    _check_vocabulary(vocab_rows * parts, parts)
    out = _split_flat(top, _top_shapes(a, parts, vocab_rows), f"{part.path.name} flat_param_0", a)
    for i in range(a.layers):
        key = f"decoder.layers.{i}.flat_param_0"
        if key not in part.state:
            raise CheckpointError(f"{part.path} lacks {key}: it has fewer layers than {a.describe()}.")
        pieces = _split_flat(part.state[key], layer_shapes, f"{part.path.name} {key}", a)
        out.update({f"decoder.layers.{i}.{name}": t for name, t in pieces.items()})
    extra = [k for k in part.state if k.endswith("flat_param_0") and k != "flat_param_0"
             and int(k.split(".")[2]) >= a.layers]
    if extra:
        raise CheckpointError(f"{part.path} has more layers than {a.describe()} ({extra[0]}): check --size.")
    return out


# ------------------------------------------------------------------------------------------ merging

_ROW_SPLIT = ("fc1.weight", "fc1.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias",
              "q_proj.weight", "q_proj.bias")
_COLUMN_SPLIT = ("out_proj.weight", "fc2.weight")
_DROPPED = ("decoder.version", "decoder.output_projection.weight")  # version: a marker; output: tied to embed_tokens
_HF_NAMES = {
    "decoder.embed_tokens.weight": "model.decoder.embed_tokens.weight",
    "decoder.embed_positions.weight": "model.decoder.embed_positions.weight",
    "decoder.layer_norm.weight": "model.decoder.final_layer_norm.weight",
    "decoder.layer_norm.bias": "model.decoder.final_layer_norm.bias",
    "decoder.project_in_dim.weight": "model.decoder.project_in.weight",
    "decoder.project_out_dim.weight": "model.decoder.project_out.weight",
}


def _merge_tensor(name: str, tensors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """One weight from every model-parallel part -> the full weight(s), under metaseq names (qkv split)."""
    if name.endswith((".qkv_proj.weight", ".qkv_proj.bias")):
        # Each part's rows are [k; v; q] for its own heads: split every part, then join the parts.
        thirds = [t.chunk(3, dim=0) for t in tensors]
        out = {}
        for i, proj in enumerate(("k_proj", "v_proj", "q_proj")):
            out[name.replace("qkv_proj", proj)] = torch.cat([third[i] for third in thirds], dim=0)
        return out
    if len(tensors) == 1:
        return {name: tensors[0]}
    if name == "decoder.embed_tokens.weight" or name.endswith(_ROW_SPLIT):
        return {name: torch.cat(tensors, dim=0)}  # vocabulary / output rows in contiguous blocks
    if name.endswith(_COLUMN_SPLIT):
        return {name: torch.cat(tensors, dim=1)}
    first = tensors[0]
    for i, other in enumerate(tensors[1:], start=1):  # replicated: every part holds the same values (up to
        # fp16 rounding, where parts were saved in different dtypes)
        if other.shape != first.shape or not torch.allclose(other.float(), first.float(), rtol=2e-3, atol=1e-3):
            raise CheckpointError(
                f"Model-parallel parts 0 and {i} disagree on {name}, which every part holds a copy of: the parts "
                "do not come from the same checkpoint."
            )
    return {name: first}


def _hf_name(name: str) -> str:
    if name in _HF_NAMES:
        return _HF_NAMES[name]
    if name.startswith("decoder.layers."):
        return "model." + name
    raise CheckpointError(f"Unexpected weight '{name}': this is not an OPT decoder checkpoint.")


def _groups(names: list[str], layers: int) -> Iterator[list[str]]:
    """Weight names in writing order: the top level, then layer by layer (bounded memory)."""
    top = [n for n in names if not n.startswith("decoder.layers.")]
    yield top
    for i in range(layers):
        prefix = f"decoder.layers.{i}."
        yield [n for n in names if n.startswith(prefix)]


# ------------------------------------------------------------------------------------------ converting


@dataclass
class ConversionReport:
    """What was read and written."""

    source: list[str]
    destination: str
    layout: str
    model_parallel: int
    architecture: dict
    parameters: int
    dtype: str
    files: list[str]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


class _ShardWriter:
    """Writes tensors to safetensors files of at most `max_bytes` each, as they come."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[tuple[str, list[str]]] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous().clone()  # no storage shared with the mapped source files
        self.pending_bytes += size

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"part-{len(self.files):05d}.safetensors"
        save_file(self.pending, str(self.folder / name), metadata={"format": "pt"})
        self.files.append((name, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[str]:
        """Rename to Hugging Face's names and write the index for several shards."""
        self.flush()
        if len(self.files) == 1:
            os.replace(self.folder / self.files[0][0], self.folder / "model.safetensors")
            return ["model.safetensors"]
        total, weight_map, names = len(self.files), {}, []
        for i, (tmp, keys) in enumerate(self.files, start=1):
            final = f"model-{i:05d}-of-{total:05d}.safetensors"
            os.replace(self.folder / tmp, self.folder / final)
            weight_map.update({k: final for k in keys})
            names.append(final)
        size = sum((self.folder / n).stat().st_size for n in names)
        index = {"metadata": {"total_size": size}, "weight_map": weight_map}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return names + ["model.safetensors.index.json"]


def _resolve_architecture(parts: list[Part], size: str | None, num_heads: int | None,
                          notes: list[str]) -> Architecture:
    cfg = parts[0].cfg
    from_cfg = architecture_from_cfg(cfg)
    from_size = architecture_from_size(size) if size else None
    if parts[0].flattened:
        arch = from_cfg or from_size
        if arch is None:
            raise CheckpointError(
                "These are FSDP-flattened parts without a cfg, so their layout is unknown: pass the size they come "
                "from, e.g. --size opt-1.3b."
            )
    else:
        arch = architecture_from_weights(parts[0].state, len(parts))
        _check_vocabulary(arch.vocab_size, len(parts))
        reference = from_cfg or from_size
        if reference is not None:
            for field_name in ("layers", "d_model", "ffn", "word_embed_proj_dim", "pre_layer_norm"):
                if getattr(arch, field_name) != getattr(reference, field_name):
                    source = "cfg" if from_cfg else f"--size {size}"
                    raise CheckpointError(
                        f"The weights ({arch.describe()}) do not match the {source} ({reference.describe()})."
                    )
    if from_size is not None and from_cfg is not None and from_size.d_model != from_cfg.d_model:
        notes.append(f"--size {size} differs from the checkpoint's cfg; the cfg was used.")
    heads = (from_cfg.heads if from_cfg else None) or num_heads or (from_size.heads if from_size else None)
    if num_heads and from_cfg and from_cfg.heads and num_heads != from_cfg.heads:
        raise CheckpointError(f"--num-heads {num_heads} contradicts the checkpoint's cfg ({from_cfg.heads} heads).")
    if heads is None:
        guess = find_size_by_shape(arch)
        hint = f" (its shapes are those of {guess}: --size {guess})" if guess else ""
        raise CheckpointError(
            "The number of attention heads cannot be read from weight shapes, and this checkpoint has no cfg: "
            f"pass --size NAME or --num-heads N{hint}."
        )
    arch.heads = heads
    if arch.d_model % heads or heads % len(parts):
        raise CheckpointError(
            f"{heads} heads do not divide d_model {arch.d_model} (or the {len(parts)} model-parallel parts): "
            "check --num-heads / --size."
        )
    return arch


def find_size_by_shape(arch: Architecture) -> str | None:
    from .models import SIZES

    for size in SIZES.values():
        if (size.layers, size.d_model, size.ffn, size.word_embed_proj_dim) == (
                arch.layers, arch.d_model, arch.ffn, arch.word_embed_proj_dim):
            return size.name
    return None


def common_dtype(parts: list[Part], dtype: torch.dtype | None, notes: list[str]) -> torch.dtype:
    """The dtype to write: the one asked for, else the token table's. Weights stored in several float
    dtypes (fp32 layer norms beside fp16 matrices, parts saved differently) are all converted to it."""
    floats = {t.dtype for p in parts for t in p.state.values() if t.is_floating_point()}
    table = next((p.state[k] for p in parts for k in ("decoder.embed_tokens.weight", "flat_param_0") if k in p.state),
                 None)
    chosen = dtype or (table.dtype if table is not None else torch.float16)
    if len(floats) > 1 and dtype is None:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in floats))
        notes.append(f"The checkpoint stores weights in several dtypes ({names}); all were converted to "
                     f"{str(chosen).removeprefix('torch.')}.")
    return chosen


def _tensors(parts: list[Part], arch: Architecture, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, full tensor) pairs, merged across parts, group by group, all in `dtype`."""
    states = [_unflatten(p, arch, len(parts)) if p.flattened else p.state for p in parts]
    names = [n for n in states[0] if n not in _DROPPED]
    for i, state in enumerate(states[1:], start=1):
        theirs = {n for n in state if n not in _DROPPED}
        if theirs != set(names):
            diff = sorted(theirs.symmetric_difference(names))[:3]
            raise CheckpointError(f"Model-parallel part {i} holds different weights from part 0 ({', '.join(diff)}).")
    for group in _groups(names, arch.layers):
        for name in group:
            pieces = [s[name].to(dtype) if s[name].is_floating_point() else s[name] for s in states]
            for merged_name, tensor in _merge_tensor(name, pieces).items():
                yield _hf_name(merged_name), tensor


def _check_against_model(folder: Path, files: list[str], arch: Architecture, config) -> int:
    """Every weight transformers' OPT expects is there with its shape, and nothing else; returns the count."""
    from transformers import OPTForCausalLM

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in OPTForCausalLM(config).state_dict().items() if k != "lm_head.weight"}
    found, count = {}, 0
    for name in files:
        if name.endswith(".safetensors"):
            with safe_open(str(folder / name), framework="pt") as handle:
                for key in handle.keys():
                    found[key] = tuple(handle.get_slice(key).get_shape())
                    count += _numel(found[key])
    if found != expected:
        missing = sorted(set(expected) - set(found))[:3]
        extra = sorted(set(found) - set(expected))[:3]
        wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])[:3]
        raise CheckpointError(
            f"The converted weights do not fit {arch.describe()}: missing {missing}, unexpected {extra}, "
            f"wrong shapes {wrong}."
        )
    return count


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    size: str | None = None,
    num_heads: int | None = None,
    dtype: str | torch.dtype | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = 2 * 1024**3,
    progress: Callable[[str], None] = lambda line: None,
) -> ConversionReport:
    """Convert an original metaseq OPT checkpoint to a Hugging Face folder that `load_model` and plain
    transformers load (config, safetensors, OPT's tokenizer).

    Args:
        src: a checkpoint file, or a folder holding one (restored.pt, reshard.pt) or its parts
            (reshard-model_part-K.pt).
        dst: the folder to create. It is written beside, under a temporary name, and renamed at the end,
            so a failure leaves no half-written model.
        size: the OPT size it comes from (opt-350m, ...), for the head count and flattened layouts when
            the checkpoint has no cfg.
        num_heads: the head count, when the checkpoint has no cfg and `size` is not given.
        dtype: convert the weights (default: keep the checkpoint's, fp16 for the releases).
        overwrite: replace an existing non-empty `dst`.

    Raises:
        CheckpointError (or UnsafeCheckpointError): anything unreadable, inconsistent or unsafe.
    """
    dst = Path(dst).expanduser()
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise CheckpointError(f"{dst} already exists and is not empty: choose another folder or pass --overwrite.")
    if size is not None:
        get_size(size)
    if num_heads is not None and num_heads < 1:
        raise CheckpointError(f"--num-heads must be a positive number (got {num_heads}).")
    paths = find_parts(src)
    notes: list[str] = []
    parts = []
    for i, path in enumerate(paths):
        progress(f"reading {path} ({i + 1}/{len(paths)})")
        parts.append(read_part(path))
    if len({p.flattened for p in parts}) > 1:
        raise CheckpointError("Some parts are FSDP-flattened and others are not: they are not one checkpoint.")
    declared = _cfg_model_parallel(parts[0].cfg)
    if declared is not None and declared != len(parts):
        raise CheckpointError(
            f"The checkpoint says it was split into {declared} model-parallel parts, but {len(parts)} were found "
            f"({', '.join(p.name for p in paths)}): {'some are missing' if declared > len(parts) else 'some do not belong'}."
        )
    arch = _resolve_architecture(parts, size, num_heads, notes)
    if not parts[0].has_version and arch.pre_layer_norm:
        notes.append(
            "The checkpoint has no decoder.version (written before mid-2022). metaseq then silently drops the final "
            "layer norm, which ruins the output; it is kept here."
        )
    torch_dtype = None
    if dtype is not None:
        from .loading import resolve_dtype

        torch_dtype = resolve_dtype(dtype, "cpu")
    torch_dtype = common_dtype(parts, torch_dtype, notes)
    tmp = dst.parent / f".{dst.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        writer = _ShardWriter(tmp, max_shard_bytes)
        out_dtype = None
        for name, tensor in _tensors(parts, arch, torch_dtype):
            out_dtype = out_dtype or tensor.dtype
            writer.add(name, tensor)
            if name.endswith("final_layer_norm.bias") and ".layers." in name:
                progress(f"layer {int(name.split('.')[3]) + 1}/{arch.layers} converted")
        files = writer.finish()
        if arch.vocab_size is None:  # flattened: the vocabulary follows from the embedding rows written
            with safe_open(str(tmp / _file_of(tmp, files, "model.decoder.embed_tokens.weight")), framework="pt") as h:
                arch.vocab_size = h.get_slice("model.decoder.embed_tokens.weight").get_shape()[0]
        config = opt_config(
            _size_like(arch), vocab_size=arch.vocab_size, max_position_embeddings=arch.max_positions,
            dtype=str(out_dtype).removeprefix("torch."),
        )
        count = _check_against_model(tmp, files, arch, config)
        config.save_pretrained(tmp)
        from transformers import GenerationConfig

        GenerationConfig(bos_token_id=2, eos_token_id=2, pad_token_id=1).save_pretrained(tmp)
        from .loading import opt_tokenizer

        opt_tokenizer().save_pretrained(tmp)
        layout = ("FSDP-flattened" if parts[0].flattened else "unflattened") + (
            f", {len(parts)}-way model parallel" if len(parts) > 1 else ", single file")
        report = ConversionReport(
            source=[str(p) for p in paths], destination=str(dst), layout=layout, model_parallel=len(parts),
            architecture=asdict(arch), parameters=count, dtype=str(out_dtype).removeprefix("torch."),
            files=files, notes=notes,
        )
        (tmp / "conversion.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _file_of(folder: Path, files: list[str], key: str) -> str:
    if "model.safetensors" in files:
        return "model.safetensors"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return index["weight_map"][key]


def _size_like(arch: Architecture):
    from .models import OPTSize

    return OPTSize("converted", arch.layers, arch.heads, arch.d_model, arch.ffn, arch.word_embed_proj_dim,
                   arch.pre_layer_norm)


def compare_models(converted, reference, tokenizer, prompts: list[str], new_tokens: int = 20) -> list[dict]:
    """Per prompt: the largest logit difference between two models (run in fp32 on the converted model's
    device) and whether greedy decoding picks the same tokens: how a conversion is checked."""
    from .decoding import model_device
    from .generation import GenerationSettings, encode_prompt, generate

    settings = GenerationSettings.greedy(max_new_tokens=new_tokens)
    rows = []
    for prompt in prompts:
        ids = encode_prompt(tokenizer, prompt)
        with torch.inference_mode():
            a = converted(torch.tensor([ids], device=model_device(converted))).logits.float().cpu()
            b = reference(torch.tensor([ids], device=model_device(reference))).logits.float().cpu()
        same = (generate(converted, tokenizer, prompt, settings).token_ids
                == generate(reference, tokenizer, prompt, settings).token_ids)
        rows.append({"prompt": prompt, "max logit difference": float((a - b).abs().max()),
                     "same greedy tokens": same})
    return rows
