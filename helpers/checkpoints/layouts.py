"""Tensor shapes of an OPT in metaseq's layouts: one model-parallel part's weights, and FSDP's flat parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import CheckpointError
from ..opt.sizes import MAX_POSITIONS, POSITION_OFFSET

Shapes = list[tuple[str, tuple[int, ...]]]


@dataclass
class Architecture:
    """What the weights need to be laid out: read from the weights, checked against `cfg`; heads from `cfg`,
    `--size` or `--num-heads`."""

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


def top_shapes(a: Architecture, vocab_rows: int) -> Shapes:
    """The weights outside the layers, in metaseq's registration order (FSDP's flattening order)."""
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


def layer_shapes(a: Architecture, parts: int, fused: bool) -> Shapes:
    """One layer's weights in one of `parts` model-parallel parts, in registration order; `fused`: one
    qkv_proj whose rows are [k; v; q] for the part's heads (metaseq's model-parallel attention)."""
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


def part_shapes(a: Architecture, parts: int, fused: bool) -> dict[str, tuple[int, ...]]:
    """Every weight one unflattened model-parallel part must hold, with its shape."""
    shapes = dict(top_shapes(a, a.vocab_size // parts))
    for i in range(a.layers):
        shapes.update({f"decoder.layers.{i}.{name}": shape for name, shape in layer_shapes(a, parts, fused)})
    return shapes


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def flat_split(a: Architecture, layer_values: int) -> int | None:
    """Into how many model-parallel parts a layer was split, given how many values one part's flat layer
    parameter holds; None if no split fits `a`."""
    for parts in range(1, a.d_model + 1):
        if a.d_model % parts == 0 and a.ffn % parts == 0 and (a.heads is None or a.heads % parts == 0):
            if sum(numel(s) for _, s in layer_shapes(a, parts, parts > 1)) == layer_values:
                return parts
    return None


def flat_vocab_rows(a: Architecture, top_values: int, where: str) -> int:
    """The embedding rows one part holds, from the size of its top-level flat parameter."""
    rest = sum(numel(s) for _, s in top_shapes(a, 0))
    rows, remainder = divmod(top_values - rest, a.word_embed_proj_dim)
    if remainder or rows <= 0:
        raise CheckpointError(
            f"{where}: the top-level flat parameter ({top_values:,} values) does not fit {a.describe()} with "
            f"{a.max_positions} positions and any vocabulary: the architecture does not match (check --size)."
        )
    return rows


def split_flat(flat: torch.Tensor, shapes: Shapes, where: str, a: Architecture) -> dict[str, torch.Tensor]:
    """Cut a flat FSDP parameter into the named tensors, checking the pieces add up exactly."""
    need = sum(numel(s) for _, s in shapes)
    if flat.dim() != 1 or flat.numel() != need:
        raise CheckpointError(
            f"{where} holds {flat.numel():,} values but {a.describe()} needs {need:,}: the architecture does not "
            "match this checkpoint (check --size), a model-parallel part is missing or extra, or the file is damaged."
        )
    out, offset = {}, 0
    for name, shape in shapes:
        n = numel(shape)
        out[name] = flat.narrow(0, offset, n).view(shape)
        offset += n
    return out


def unflatten(state: dict[str, torch.Tensor], where: str, a: Architecture, parts: int) -> dict[str, torch.Tensor]:
    """Named tensors of one FSDP-flattened part (model-parallel parts hold a fused qkv_proj)."""
    top = state.get("flat_param_0")
    if top is None:
        raise CheckpointError(f"{where} has per-layer flat parameters but no top-level flat_param_0: it is damaged.")
    out = split_flat(top, top_shapes(a, a.vocab_size // parts), f"{where} flat_param_0", a)
    shapes = layer_shapes(a, parts, parts > 1)
    for i in range(a.layers):
        key = f"decoder.layers.{i}.flat_param_0"
        if key not in state:
            raise CheckpointError(f"{where} lacks {key}: it has fewer layers than {a.describe()}.")
        pieces = split_flat(state[key], shapes, f"{where} {key}", a)
        out.update({f"decoder.layers.{i}.{name}": t for name, t in pieces.items()})
    if "decoder.version" in state:
        out["decoder.version"] = state["decoder.version"]
    return out


def flat_layer_count(state: dict[str, torch.Tensor]) -> int:
    return len([k for k in state if k.startswith("decoder.layers.") and k.endswith(".flat_param_0")])
