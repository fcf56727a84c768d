"""Tiny random OPT models of both layouts, for the tests and the notebooks run in them."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import OPTConfig, OPTForCausalLM

from helpers.opt.sizes import get_size, opt_config

# Two tiny shapes cover both OPT layouts: pre layer norm (125M, 1.3B and up) and the 350M-style post
# layer norm with project_in/project_out. The real vocabulary size keeps the real tokenizer usable.
TINY_VARIANTS = {
    "pre-ln": dict(hidden_size=64, num_hidden_layers=2, ffn_dim=256, num_attention_heads=4,
                   word_embed_proj_dim=64, do_layer_norm_before=True),
    "post-ln": dict(hidden_size=64, num_hidden_layers=2, ffn_dim=256, num_attention_heads=4,
                    word_embed_proj_dim=32, do_layer_norm_before=False),
}


def tiny_config(variant: str = "pre-ln", **overrides) -> OPTConfig:
    """A tiny OPT config: `variant` is 'pre-ln' or 'post-ln' (350M-style, with project_in/out)."""
    if variant not in TINY_VARIANTS:
        raise ValueError(f"Unknown tiny variant '{variant}'; use one of {list(TINY_VARIANTS)}.")
    fields = dict(TINY_VARIANTS[variant], dropout=0.0, max_position_embeddings=2048)
    fields.update(overrides)
    base = get_size("opt-125m")
    return opt_config(base, **fields)


def _randomize(model: OPTForCausalLM, seed: int, std: float) -> OPTForCausalLM:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                values = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
                param.copy_(values.to(param.dtype))
    return model


def tiny_model(variant: str = "pre-ln", seed: int = 0, std: float = 0.2, **overrides) -> OPTForCausalLM:
    """A tiny OPT with random weights, in eval mode, fp32 on the CPU. A wider `std` than OPT's 0.02
    init gives peaked distributions, so greedy tokens are well separated in tests."""
    model = OPTForCausalLM(tiny_config(variant, **overrides))
    return _randomize(model, seed, std).eval()


def save_tiny_model(path: str | Path, variant: str = "pre-ln", seed: int = 0, **overrides) -> Path:
    """Write a tiny OPT (safetensors) and OPT's real tokenizer to `path`: a folder `load_model` takes."""
    from helpers.opt.tokenizer import opt_tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tiny_model(variant, seed=seed, **overrides).save_pretrained(path)
    opt_tokenizer().save_pretrained(path)
    return path
