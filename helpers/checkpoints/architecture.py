"""The model's shape and model-parallel split: from the weights, checked against `cfg`; heads from `cfg` or flags."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import CheckpointError
from ..opt.sizes import POSITION_OFFSET, SIZES, VOCAB_SIZE, get_size
from .layouts import Architecture, flat_layer_count, flat_split, flat_vocab_rows, layer_shapes, numel
from .parts import Part

_CHECKED = ("layers", "d_model", "ffn", "word_embed_proj_dim", "pre_layer_norm")


def cfg_model(cfg: dict | None) -> dict:
    """The model section of a metaseq cfg (`cfg['model']`, or the older `args`)."""
    if not cfg:
        return {}
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else None
    return model or (cfg.get("args") if isinstance(cfg.get("args"), dict) else {}) or {}


def cfg_model_parallel(cfg: dict | None) -> int | None:
    """The model_parallel_size a cfg states (for a convert_to_singleton file: that of its source)."""
    if not cfg:
        return None
    for section in ("common", "model", "distributed_training", "args"):
        value = (cfg.get(section) or {}).get("model_parallel_size") if isinstance(cfg.get(section), dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def architecture_from_cfg(cfg: dict | None) -> Architecture | None:
    model = cfg_model(cfg)
    needed = ("decoder_layers", "decoder_embed_dim", "decoder_ffn_embed_dim")
    if not all(isinstance(model.get(k), int) for k in needed):
        return None
    d = model["decoder_embed_dim"]
    heads = model.get("decoder_attention_heads")
    positions = model.get("max_target_positions")
    return Architecture(
        layers=model["decoder_layers"], d_model=d, ffn=model["decoder_ffn_embed_dim"],
        heads=heads if isinstance(heads, int) else None,
        word_embed_proj_dim=model.get("decoder_input_dim") or d,
        pre_layer_norm=bool(model.get("decoder_normalize_before", True)),
        vocab_size=None, **({"max_positions": positions} if isinstance(positions, int) else {}),
    )


def architecture_from_size(name: str) -> Architecture:
    size = get_size(name)
    return Architecture(size.layers, size.d_model, size.ffn, size.heads, size.word_embed_proj_dim,
                        size.pre_layer_norm, size.vocab_size, size.max_positions)


def architecture_from_weights(state: dict[str, torch.Tensor], where: str) -> tuple[Architecture, int]:
    """Everything but the head count, from one unflattened part, and the number of model-parallel parts
    its tensors are a share of (the attention's rows against d_model, which every part holds whole)."""
    try:
        embed = state["decoder.embed_tokens.weight"]
        positions = state["decoder.embed_positions.weight"]
        fc1 = state["decoder.layers.0.fc1.weight"]
        qkv = state.get("decoder.layers.0.self_attn.qkv_proj.weight")
        attention_rows = qkv.shape[0] // 3 if qkv is not None else state["decoder.layers.0.self_attn.q_proj.weight"].shape[0]
    except (KeyError, IndexError):
        raise CheckpointError(
            f"{where} lacks OPT decoder weights (decoder.embed_tokens, decoder.embed_positions, decoder.layers.0 "
            "fc1 and q_proj or qkv_proj): it is not an OPT checkpoint, or it is damaged."
        ) from None
    indices = {int(k.split(".")[2]) for k in state if k.startswith("decoder.layers.") and k.split(".")[2].isdigit()}
    missing = sorted(set(range(max(indices) + 1)) - indices)
    if missing:
        raise CheckpointError(f"{where} lacks layer(s) {', '.join(map(str, missing))} of {max(indices) + 1}: it is damaged.")
    d_model = positions.shape[1]
    if attention_rows == 0 or d_model % attention_rows:
        raise CheckpointError(
            f"{where}: the attention of decoder.layers.0 has {attention_rows} rows, which is no share of d_model "
            f"{d_model}: the file is damaged or not an OPT checkpoint."
        )
    parts = d_model // attention_rows
    arch = Architecture(
        layers=len(indices), d_model=d_model, ffn=fc1.shape[0] * parts, heads=None,
        word_embed_proj_dim=embed.shape[1], pre_layer_norm="decoder.layer_norm.weight" in state,
        vocab_size=embed.shape[0] * parts, max_positions=positions.shape[0] - POSITION_OFFSET,
    )
    return arch, parts


def _check_against(arch: Architecture, reference: Architecture, source: str, positions: bool) -> None:
    fields = _CHECKED + (("max_positions",) if positions else ())
    wrong = [f for f in fields if getattr(arch, f) != getattr(reference, f)]
    if wrong:
        detail = ", ".join(f"{f} {getattr(arch, f)} against {getattr(reference, f)}" for f in wrong)
        raise CheckpointError(
            f"The weights ({arch.describe()}, {arch.max_positions} positions) do not match the {source} ({detail})."
        )


def find_size_by_shape(arch: Architecture) -> str | None:
    for size in SIZES.values():
        if (size.layers, size.d_model, size.ffn, size.word_embed_proj_dim) == (
                arch.layers, arch.d_model, arch.ffn, arch.word_embed_proj_dim):
            return size.name
    return None


def _size_by_flat_values(layers: int, layer_values: int) -> str | None:
    for size in SIZES.values():
        arch = architecture_from_size(size.name)
        if arch.layers == layers and flat_split(arch, layer_values) is not None:
            return size.name
    return None


def _flattened(parts: list[Part], from_cfg: Architecture | None, from_size: Architecture | None,
               size: str | None) -> tuple[Architecture, int]:
    """FSDP-flattened parts: the shape from cfg or --size, checked against every flat parameter's size."""
    state, where = parts[0].state, parts[0].name
    layers = flat_layer_count(state)
    layer_values = state["decoder.layers.0.flat_param_0"].numel() if layers else 0
    arch = from_cfg or from_size
    if arch is None:
        guess = _size_by_flat_values(layers, layer_values)
        hint = f" (its flat parameters have the sizes of {guess}: --size {guess})" if guess else ""
        raise CheckpointError(
            "These are FSDP-flattened parts without a cfg, so their layout is unknown: pass the size they come "
            f"from, e.g. --size opt-1.3b{hint}."
        )
    source = "cfg" if from_cfg else f"--size {size}"
    if layers != arch.layers:
        raise CheckpointError(f"{where} holds {layers} flattened layers, but the {source} says {arch.layers}.")
    split = flat_split(arch, layer_values)
    if split is None:
        whole = sum(numel(s) for _, s in layer_shapes(arch, 1, False))
        raise CheckpointError(
            f"{where} decoder.layers.0.flat_param_0 holds {layer_values:,} values, which is no model-parallel share of "
            f"a layer of {arch.describe()} ({whole:,} values): the {source} does not match this checkpoint "
            "(check --size), or the file is damaged."
        )
    top = state.get("flat_param_0")
    if top is None:
        raise CheckpointError(f"{where} has per-layer flat parameters but no top-level flat_param_0: it is damaged.")
    arch.vocab_size = flat_vocab_rows(arch, top.numel(), where) * split
    return arch, split


def _check_part_count(parts: list[Part], split: int, cfg: dict | None, say: Callable[[str], None]) -> None:
    """The parts found must be the parts the tensors are shares of; a cfg's model_parallel_size is only a hint
    (convert_to_singleton keeps the cfg of the parts it gathered)."""
    found = len(parts)
    evidence = "its flat layer parameters" if parts[0].flattened else "the attention in decoder.layers.0"
    if split > found:
        raise CheckpointError(
            f"{', '.join(p.name for p in parts)} hold{'s' if found == 1 else ''} 1/{split} of the model each ({evidence} "
            f"is a 1/{split} share): {split - found} model-parallel part(s) missing. Every part "
            f"(model_part-0 to model_part-{split - 1}) is needed; fetch the missing file(s)."
        )
    if split < found:
        raise CheckpointError(
            f"Found {found} model-parallel parts ({', '.join(p.name for p in parts)}), but each holds 1/{split} of the "
            f"model ({evidence}): {found - split} of them do not belong to this checkpoint (a copy, or a part of "
            f"another). Keep model_part-0 to model_part-{split - 1}."
        )
    declared = cfg_model_parallel(cfg)
    if declared is not None and declared != split:
        if split == 1:
            say(f"The cfg says model_parallel_size {declared}, but the tensors are full size: read as one unsplit "
                "model (convert_to_singleton's restored.pt keeps the cfg of the parts it gathered).")
        else:
            say(f"The cfg says model_parallel_size {declared}, but the tensors are 1/{split} shares and {found} parts "
                f"were found: read as {split} parts.")


def resolve_architecture(parts: list[Part], size: str | None, num_heads: int | None,
                         say: Callable[[str], None]) -> tuple[Architecture, int]:
    """The architecture (heads included) and the model-parallel split of `parts`.

    Raises:
        CheckpointError: the weights disagree with cfg or --size, parts are missing or extra, no head count.
    """
    cfg = parts[0].cfg
    from_cfg = architecture_from_cfg(cfg)
    from_size = architecture_from_size(size) if size else None
    if parts[0].flattened:
        arch, split = _flattened(parts, from_cfg, from_size, size)
    else:
        arch, split = architecture_from_weights(parts[0].state, parts[0].name)
        if from_cfg is not None:
            _check_against(arch, from_cfg, "cfg", positions="max_target_positions" in cfg_model(cfg))
        elif from_size is not None:
            _check_against(arch, from_size, f"--size {size}", positions=False)
    _check_part_count(parts, split, cfg, say)
    if from_size is not None and from_cfg is not None and from_size.d_model != from_cfg.d_model:
        say(f"--size {size} differs from the checkpoint's cfg; the cfg was used.")
    if num_heads and from_cfg and from_cfg.heads and num_heads != from_cfg.heads:
        raise CheckpointError(f"--num-heads {num_heads} contradicts the checkpoint's cfg ({from_cfg.heads} heads).")
    heads = (from_cfg.heads if from_cfg else None) or num_heads or (from_size.heads if from_size else None)
    if heads is None:
        guess = find_size_by_shape(arch)
        hint = f" (its shapes are those of {guess}: --size {guess})" if guess else ""
        raise CheckpointError(
            "The number of attention heads cannot be read from weight shapes, and this checkpoint has no cfg: "
            f"pass --size NAME or --num-heads N{hint}."
        )
    if arch.d_model % heads or heads % split:
        raise CheckpointError(
            f"{heads} heads do not divide d_model {arch.d_model} (or the {split} model-parallel parts): "
            "check --num-heads / --size."
        )
    arch.heads = heads
    if arch.vocab_size != VOCAB_SIZE:
        say(f"The vocabulary has {arch.vocab_size:,} rows, not OPT's {VOCAB_SIZE:,}: the model was trained with its "
            "own dictionary. OPT's tokenizer was written with it (BOS and all) but may not fit: use the dictionary "
            "the model was trained with to turn text into ids.")
    return arch, split
