"""Writing the Hugging Face folder: safetensors shards, checked against transformers' OPT, config, tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError
from ..opt.sizes import BOS_TOKEN_ID, EOS_TOKEN_ID, PAD_TOKEN_ID, OPTSize, opt_config
from ..opt.tokenizer import opt_tokenizer
from .layouts import Architecture, numel


class ShardWriter:
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


def hf_config(arch: Architecture, dtype: torch.dtype):
    """The `OPTConfig` of the converted model: its own vocabulary and positions."""
    size = OPTSize("converted", arch.layers, arch.heads, arch.d_model, arch.ffn, arch.word_embed_proj_dim,
                   arch.pre_layer_norm)
    return opt_config(size, vocab_size=arch.vocab_size, max_position_embeddings=arch.max_positions,
                      dtype=str(dtype).removeprefix("torch."),
                      architectures=["OPTForCausalLM"])  # as hub folders say: vLLM picks its model class by it


def check_against_model(folder: Path, files: list[str], arch: Architecture, config) -> int:
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
                    count += numel(found[key])
    if found != expected:
        missing = sorted(set(expected) - set(found))[:3]
        extra = sorted(set(found) - set(expected))[:3]
        wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])[:3]
        raise CheckpointError(
            f"The converted weights do not fit {arch.describe()}: missing {missing}, unexpected {extra}, "
            f"wrong shapes {wrong}."
        )
    return count


def save_companions(folder: Path, config) -> None:
    """config.json, generation_config.json and OPT's tokenizer (with its BOS, as OPT was trained)."""
    from transformers import GenerationConfig

    config.save_pretrained(folder)
    GenerationConfig(bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=PAD_TOKEN_ID).save_pretrained(folder)
    opt_tokenizer().save_pretrained(folder)
