"""Model-parallel parts merged into full weights under Hugging Face's names, each part checked first."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..errors import CheckpointError
from .layouts import Architecture, part_shapes, unflatten
from .parts import Part

_ROW_SPLIT = ("fc1.weight", "fc1.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias",
              "q_proj.weight", "q_proj.bias")
_COLUMN_SPLIT = ("out_proj.weight", "fc2.weight")
DROPPED = ("decoder.version", "decoder.output_projection.weight")  # version: a marker; output: tied to embed_tokens
_HF_NAMES = {
    "decoder.embed_tokens.weight": "model.decoder.embed_tokens.weight",
    "decoder.embed_positions.weight": "model.decoder.embed_positions.weight",
    "decoder.layer_norm.weight": "model.decoder.final_layer_norm.weight",
    "decoder.layer_norm.bias": "model.decoder.final_layer_norm.bias",
    "decoder.project_in_dim.weight": "model.decoder.project_in.weight",
    "decoder.project_out_dim.weight": "model.decoder.project_out.weight",
}


def part_states(parts: list[Part], arch: Architecture, split: int) -> list[dict[str, torch.Tensor]]:
    """Each part's named tensors (unflattened where needed), checked against the shapes of a 1/`split` share."""
    states = []
    for part in parts:
        state = unflatten(part.state, part.name, arch, split) if part.flattened else part.state
        fused = any(".qkv_proj." in k for k in state)
        expected = part_shapes(arch, split, fused)
        found = {k: tuple(v.shape) for k, v in state.items() if k not in DROPPED}
        if found != expected:
            missing = sorted(set(expected) - set(found))[:3]
            extra = sorted(set(found) - set(expected))[:3]
            wrong = [f"{k} {found[k]} instead of {expected[k]}" for k in sorted(set(found) & set(expected))
                     if found[k] != expected[k]][:3]
            what = "; ".join(s for s in (missing and f"missing {', '.join(missing)}",
                                         extra and f"unexpected {', '.join(extra)}",
                                         wrong and f"wrong shapes: {', '.join(wrong)}") if s)
            share = f"a 1/{split} model-parallel share of " if split > 1 else ""
            raise CheckpointError(
                f"{part.path} does not hold {share}{arch.describe()} as the other weights say ({what}): it is damaged "
                "or belongs to another checkpoint."
            )
        states.append(state)
    return states


def _replicated(name: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    """A weight every part holds a copy of: identical, or equal up to fp16 rounding where the parts were
    saved in different dtypes."""
    first = tensors[0]
    if first.is_meta:  # planning shapes: no values to compare
        return first
    for i, other in enumerate(tensors[1:], start=1):
        same = (torch.equal(other, first) if other.dtype == first.dtype
                else torch.allclose(other.float(), first.float(), rtol=2e-3, atol=1e-3))
        if not same:
            raise CheckpointError(
                f"Model-parallel parts 0 and {i} disagree on {name}, which every part holds a copy of: the parts "
                "do not come from the same checkpoint."
            )
    return first


def merge_tensor(name: str, tensors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """One weight from every model-parallel part -> the full weight(s), under metaseq names (qkv split)."""
    if name.endswith((".qkv_proj.weight", ".qkv_proj.bias")):
        # Each part's rows are [k; v; q] for its own heads: split every part, then join the parts.
        thirds = [t.chunk(3, dim=0) for t in tensors]
        return {name.replace("qkv_proj", proj): torch.cat([third[i] for third in thirds], dim=0)
                for i, proj in enumerate(("k_proj", "v_proj", "q_proj"))}
    if len(tensors) == 1:
        return {name: tensors[0]}
    if name == "decoder.embed_tokens.weight" or name.endswith(_ROW_SPLIT):
        return {name: torch.cat(tensors, dim=0)}  # vocabulary / output rows in contiguous blocks
    if name.endswith(_COLUMN_SPLIT):
        return {name: torch.cat(tensors, dim=1)}
    return {name: _replicated(name, tensors)}


def hf_name(name: str) -> str:
    if name in _HF_NAMES:
        return _HF_NAMES[name]
    if name.startswith("decoder.layers."):
        return "model." + name
    raise CheckpointError(f"Unexpected weight '{name}': this is not an OPT decoder checkpoint.")


def _groups(names: list[str], layers: int) -> Iterator[list[str]]:
    """Weight names in writing order: the top level, then layer by layer (bounded memory)."""
    yield [n for n in names if not n.startswith("decoder.layers.")]
    for i in range(layers):
        prefix = f"decoder.layers.{i}."
        yield [n for n in names if n.startswith(prefix)]


def merged_tensors(states: list[dict[str, torch.Tensor]], arch: Architecture,
                   dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, full tensor) pairs, merged across parts, group by group, all in `dtype`."""
    names = [n for n in states[0] if n not in DROPPED]
    for group in _groups(names, arch.layers):
        for name in group:
            for merged_name, tensor in merge_tensor(name, [s[name] for s in states]).items():
                yield hf_name(merged_name), tensor.to(dtype) if tensor.is_floating_point() else tensor


def common_dtype(parts: list[Part], dtype: torch.dtype | None, say: Callable[[str], None]) -> torch.dtype:
    """The dtype to write: the one asked for, else the token table's. Weights stored in several float
    dtypes (fp32 layer norms beside fp16 matrices, parts saved differently) are all converted to it."""
    floats = {t.dtype for p in parts for k, t in p.state.items() if t.is_floating_point() and k not in DROPPED}
    table = next((p.state[k] for p in parts for k in ("decoder.embed_tokens.weight", "flat_param_0") if k in p.state),
                 None)
    chosen = dtype or (table.dtype if table is not None else torch.float16)
    if len(floats) > 1 and dtype is None:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in floats))
        say(f"The checkpoint stores weights in several dtypes ({names}); all were converted to "
            f"{str(chosen).removeprefix('torch.')}.")
    return chosen
