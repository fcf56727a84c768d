"""Write a tiny OPT in every original metaseq layout (the inverse of helpers.metaseq), for the tests."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tiny_models import tiny_model
from transformers import OPTForCausalLM

TOP_ORDER = ["decoder.embed_tokens.weight", "decoder.project_in_dim.weight", "decoder.embed_positions.weight",
             "decoder.layer_norm.weight", "decoder.layer_norm.bias", "decoder.project_out_dim.weight"]
LAYER_ORDER_SPLIT = ["self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
                     "self_attn.q_proj.weight", "self_attn.q_proj.bias"]
LAYER_ORDER_FUSED = ["self_attn.qkv_proj.weight", "self_attn.qkv_proj.bias"]
LAYER_ORDER_REST = ["self_attn.out_proj.weight", "self_attn.out_proj.bias", "self_attn_layer_norm.weight",
                    "self_attn_layer_norm.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                    "final_layer_norm.weight", "final_layer_norm.bias"]


def metaseq_vocabulary(symbols: int) -> int:
    """The embedding rows metaseq gives a dictionary: 4 specials (<s>, <pad>, </s>, <unk>) and the symbols,
    padded to a multiple of 8 (as OPT's 50,265 entries became 50,272)."""
    return -(-(4 + symbols) // 8) * 8


def metaseq_model(variant: str = "pre-ln", seed: int = 0, symbols: int = 1000, positions: int = 100) -> OPTForCausalLM:
    """A tiny OPT as metaseq trains one on its own small dictionary, with a short learned-position table
    (max_target_positions + 2 rows): neither is OPT's 50,272 or 2048."""
    return tiny_model(variant, seed=seed, vocab_size=metaseq_vocabulary(symbols), max_position_embeddings=positions)


def metaseq_state(model: OPTForCausalLM, version: bool = True) -> dict[str, torch.Tensor]:
    """The model's weights under metaseq's names, as one unflattened state dict."""
    out = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            continue
        name = key.removeprefix("model.")
        name = {"decoder.final_layer_norm.weight": "decoder.layer_norm.weight",
                "decoder.final_layer_norm.bias": "decoder.layer_norm.bias",
                "decoder.project_in.weight": "decoder.project_in_dim.weight",
                "decoder.project_out.weight": "decoder.project_out_dim.weight"}.get(name, name)
        out[name] = value.detach().clone()
    out["decoder.output_projection.weight"] = out["decoder.embed_tokens.weight"].clone()
    if version:
        out["decoder.version"] = torch.tensor([3.0])
    return out


def split_model_parallel(state: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """Megatron's split: vocabulary, fc1 and a fused [k; v; q] qkv_proj by rows per part; out_proj and fc2
    weights by columns; everything else replicated. Each part keeps its own slice of output_projection."""
    out = [dict() for _ in range(parts)]
    for name, value in state.items():
        for r in range(parts):
            rows = lambda t, r=r: t.chunk(parts, dim=0)[r].clone()  # noqa: E731
            if name in ("decoder.embed_tokens.weight", "decoder.output_projection.weight") or ".fc1." in name:
                out[r][name] = rows(value)
            elif name.endswith(("out_proj.weight", "fc2.weight")):
                out[r][name] = value.chunk(parts, dim=1)[r].clone()
            elif ".k_proj." in name:
                prefix, kind = name.split(".self_attn.k_proj.")
                k, v, q = (rows(state[f"{prefix}.self_attn.{p}_proj.{kind}"]) for p in "kvq")
                out[r][f"{prefix}.self_attn.qkv_proj.{kind}"] = torch.cat([k, v, q], dim=0)
            elif ".v_proj." in name or ".q_proj." in name:
                continue
            else:
                out[r][name] = value.clone()
    return out


def flatten(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """FSDP's flat parameters, in module registration order; buffers (decoder.version) stay apart."""
    fused = any(".qkv_proj." in k for k in state)
    out = {"flat_param_0": torch.cat([state[n].reshape(-1) for n in TOP_ORDER if n in state])}
    order = (LAYER_ORDER_FUSED if fused else LAYER_ORDER_SPLIT) + LAYER_ORDER_REST
    for i in range(layers):
        out[f"decoder.layers.{i}.flat_param_0"] = torch.cat([state[f"decoder.layers.{i}.{n}"].reshape(-1) for n in order])
    if "decoder.version" in state:
        out["decoder.version"] = state["decoder.version"]
    return out


def cfg_for(model: OPTForCausalLM, parts: int, kind: str = "namespace"):
    """metaseq's cfg: a dict holding argparse.Namespace objects, or (kind='dictconfig') an omegaconf DictConfig."""
    c = model.config
    fields = dict(arch="transformer_lm_megatron", decoder_layers=c.num_hidden_layers, decoder_embed_dim=c.hidden_size,
                  decoder_ffn_embed_dim=c.ffn_dim, decoder_attention_heads=c.num_attention_heads,
                  decoder_input_dim=c.word_embed_proj_dim, decoder_normalize_before=c.do_layer_norm_before,
                  max_target_positions=c.max_position_embeddings, activation_fn="relu", dropout=0.1)
    if kind == "namespace":
        return {"_name": None, "common": argparse.Namespace(fp16=True, model_parallel_size=parts),
                "model": argparse.Namespace(**fields), "task": argparse.Namespace(_name="streaming_language_modeling")}
    from omegaconf import OmegaConf

    return OmegaConf.create({"common": {"fp16": True, "model_parallel_size": parts}, "model": fields,
                             "task": {"_name": "streaming_language_modeling", "vocab_filename": None}})


def write_checkpoint(model: OPTForCausalLM, folder: Path, *, parts: int = 1, flat: bool = False,
                     cfg: str | None = "namespace", version: bool = True, dtype: torch.dtype | None = None,
                     name: str | None = None) -> list[Path]:
    """Write `model` to `folder` in one metaseq layout; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    state = metaseq_state(model, version=version)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() and k != "decoder.version" else v for k, v in state.items()}
    states = split_model_parallel(state, parts) if parts > 1 else [state]
    paths = []
    for r, part in enumerate(states):
        if flat:
            part = flatten(part, model.config.num_hidden_layers)
        payload = part if cfg is None else {"model": part, "cfg": cfg_for(model, parts, cfg)}
        filename = name or ("reshard.pt" if parts == 1 and not flat else f"reshard-model_part-{r}.pt")
        paths.append(folder / filename)
        torch.save(payload, paths[-1])
    return paths
