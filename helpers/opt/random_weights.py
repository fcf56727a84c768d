"""OPT models of the real sizes with random weights (benchmarks, the notebooks' RANDOM_WEIGHTS)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import OPTForCausalLM

from .sizes import OPTSize, get_size, opt_config
from .tokenizer import opt_tokenizer


def random_model(
    size: str | OPTSize, dtype: torch.dtype = torch.float16, device: str = "cpu", seed: int = 0
) -> OPTForCausalLM:
    """An OPT of a real size with random weights (N(0, 0.02) as OPT initializes), built without a
    second copy in memory: the model is created on the meta device and materialized once on `device`."""
    size = get_size(size) if isinstance(size, str) else size
    config = opt_config(size, dropout=0.0)
    with torch.device("meta"):
        model = OPTForCausalLM(config)
    model = model.to(dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=generator)
        # to_empty leaves the learned-position table's buffers and the tie to decide; re-tie lm_head.
        model.tie_weights()
    return model.eval()


def save_random_model(size: str | OPTSize, path: str | Path, dtype: torch.dtype = torch.float16,
                      device: str = "cpu", max_shard_size: str | int | None = None) -> Path:
    """Write an OPT of a real size with random weights and OPT's tokenizer to `path`, in shards of
    `max_shard_size` ("10GB" gives the hub's own layout of the larger sizes). Made on `device`: a GPU
    fills 13B parameters in a moment, where the CPU's generator takes a minute."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = random_model(size, dtype=dtype, device=device)
    model.save_pretrained(path, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    opt_tokenizer().save_pretrained(path)
    del model
    return path
