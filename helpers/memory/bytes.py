"""The one byte model: weights per dtype and quantization, KV cache per token, working memory."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..opt.sizes import POSITION_OFFSET, OPTSize, layer_parameters, parameter_breakdown
from .dtype_names import BYTES_PER_ELEMENT
from .dtypes import compute_bytes, dtype_name

# bitsandbytes stores one fp32 absmax per block of 64 4-bit weights (plus a small second level when
# double quantization is on), and one fp32 scale per output row for LLM.int8().
_NF4_BLOCK = 64


def storage_bytes(matrices: int, rows: int, rest: int, storage: str | torch.dtype) -> int:
    """Bytes of weights stored as `storage`: `matrices` parameters in the matrices a quantization shrinks
    (with their output `rows`), `rest` parameters (biases, norms, embeddings) left in the compute dtype."""
    name = dtype_name(storage)
    rest_bytes = rest * compute_bytes(name)
    if name in ("int8", "int8-weights"):  # LLM.int8() and the CPU's weight-only int8: a byte per weight, an fp32 scale per row
        return matrices + 4 * rows + rest_bytes
    if name in ("nf4", "fp4"):  # half a byte per weight, one fp32 absmax per block
        return matrices // 2 + 4 * (matrices // _NF4_BLOCK) + rest_bytes
    if name == "int8-dynamic":  # torch's CPU int8: one byte per weight, a scale per tensor
        return matrices + rest_bytes
    return int((matrices + rest) * BYTES_PER_ELEMENT[name])


def weight_bytes(size: OPTSize, dtype: str | torch.dtype = "float16") -> int:
    """Bytes the weights take in memory. For int8/nf4 (bitsandbytes) only the decoder layers' matrices
    are quantized; embeddings, lm_head, norms and biases stay in fp16, as bitsandbytes leaves them."""
    p, layer = parameter_breakdown(size), layer_parameters(size)
    return storage_bytes(p.layer_matrices, size.layers * layer.rows, p.embeddings + p.projections + p.small, dtype)


def kv_cache_bytes_per_token(size: OPTSize, dtype: str | torch.dtype = "float16") -> int:
    """Bytes of key and value cache one token adds (per sequence in a batch)."""
    return 2 * size.layers * size.d_model * compute_bytes(dtype)


GiB = 1024**3


def parse_bytes(text: str | int | float) -> int:
    """'15GiB', '15 GB', '16000MiB', '12G' or a number of bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not 0 <= text < float("inf"):
            raise ValueError(f"{text!r} is not a memory size: give a number of bytes of at least 0, or text like 15GiB.")
        return int(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(i?)B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"'{text}' is not a memory size: write it like 15GiB, 12GB or 16000MiB.")
    number, unit, binary = float(match[1]), match[2].upper(), match[3]
    base = 1024 if binary or unit == "" else 1000
    return int(number * base ** " KMGT".index(unit or " "))


# ------------------------------------------------------------------------------------------ arithmetic


@dataclass(frozen=True)
class _Piece:
    """A module the placement moves as a whole, with the bytes its weights take in each storage."""

    name: str
    matrices: int  # parameters in matrices a quantization shrinks
    rows: int  # output rows of those matrices (int8 keeps one fp32 scale per row)
    rest: int  # parameters that stay in the compute dtype (biases, norms, embeddings)
    layer: bool

    def weight_bytes(self, storage: str) -> int:
        return storage_bytes(self.matrices, self.rows, self.rest, storage)


def pieces(size: OPTSize) -> list[_Piece]:
    """OPT as the units a device map places: the token and position tables (with lm_head, tied to the
    token table), the projections of the 350M shape, the final norm, and each decoder layer."""
    d, layer = size.d_model, layer_parameters(size)
    out = [_Piece("model.decoder.embed_tokens", 0, 0, size.vocab_size * size.word_embed_proj_dim, False),
           _Piece("model.decoder.embed_positions", 0, 0, (size.max_positions + POSITION_OFFSET) * d, False)]
    if size.has_projections:
        out += [_Piece("model.decoder.project_in", 0, 0, d * size.word_embed_proj_dim, False),
                _Piece("model.decoder.project_out", 0, 0, d * size.word_embed_proj_dim, False)]
    if size.pre_layer_norm:
        out.append(_Piece("model.decoder.final_layer_norm", 0, 0, 2 * d, False))
    for i in range(size.layers):
        out.append(_Piece(f"model.decoder.layers.{i}", layer.matrices, layer.rows, layer.small, True))
    return out


def activation_bytes(size: OPTSize, context: int, batch: int, dtype_bytes: int) -> int:
    """The working memory of one forward over the whole context (the prefill): a layer's intermediates
    (the fc1 output and a handful of d_model-wide tensors) and the last position's logits in fp32."""
    return batch * context * (size.ffn + 6 * size.d_model) * dtype_bytes + 2 * batch * size.vocab_size * 4


def generation_bytes(size: OPTSize, prompt_tokens: int, new_tokens: int, rows: int, dtype: str | torch.dtype) -> int:
    """Memory one generation needs beyond the weights: the key/value cache of every row (each beam, each
    contrastive candidate is a row) over the prompt and the new tokens, and the prefill's working memory."""
    cache = kv_cache_bytes_per_token(size, dtype) * (prompt_tokens + new_tokens) * rows
    return cache + activation_bytes(size, prompt_tokens, rows, compute_bytes(dtype))
