"""Weight-only int8 for the CPU: one byte per weight, one fp32 scale per output row, fp32 arithmetic."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from transformers import OPTForCausalLM

from .matvec_kernel import fused_product, matvec_kernel

_READ_BLOCK_BYTES = 1 << 20  # fp32 bytes quantized or copied at a time: larger blocks left heap behind (measured)


RowReader = Callable[[int, int], torch.Tensor]  # rows start:end of a weight matrix, in any floating dtype


def quantize_rows(weight: torch.Tensor | RowReader, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, fp32 scale per row): each row scaled so that its largest magnitude is 127. `weight` is the
    matrix, or a reader of its `rows` rows. A block of rows at a time, so the fp32 temporaries stay small
    beside a large matrix (lm_head's), and a reader never holds more of the stored matrix than a block."""
    if isinstance(weight, torch.Tensor):
        matrix = weight.detach()
        weight, rows = (lambda start, end: matrix[start:end]), matrix.shape[0]
    q, scale = None, torch.empty(rows, dtype=torch.float32)
    for start, end, block in _blocks(weight, rows):  # each block is a copy, worked on in place
        if q is None:
            q = torch.empty(rows, block.shape[1], dtype=torch.int8)
        torch.linalg.vector_norm(block, ord=float("inf"), dim=1, out=scale[start:end])  # each row's largest |w|
        scale[start:end].div_(127).clamp_(min=torch.finfo(torch.float32).tiny)
        q[start:end] = block.div_(scale[start:end, None]).round_().clamp_(-127, 127)
    return q, scale


class Int8WeightLinear(torch.nn.Module):
    """A Linear whose weight is stored as int8 with a per-row scale; inputs and outputs stay fp32.
    Its products are those of the dequantized weight `q * scale` (up to fp32 rounding: the scale is applied to
    the product). No fp32 weight is kept: the fused kernel widens each int8 weight in registers, and the
    fallback converts a block of rows at a time."""

    def __init__(self, linear: torch.nn.Linear, stored: RowReader | None = None):
        """`linear`'s weight quantized, read through `stored` where given (the same matrix, from its file)."""
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_rows(linear.weight) if stored is None else quantize_rows(stored, self.out_features)
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    @classmethod
    def packed(cls, parts: tuple[Int8WeightLinear, ...]) -> Int8WeightLinear:
        """One layer computing `parts` side by side (q, k and v as one product); each part's buffers are
        pointed at its slice of the new one's, so no weight is held twice."""
        whole = cls.__new__(cls)
        torch.nn.Module.__init__(whole)
        whole.in_features, whole.out_features = parts[0].in_features, sum(p.out_features for p in parts)
        for name in ("q", "scale", "bias"):
            pieces = [getattr(p, name) for p in parts]
            whole.register_buffer(name, None if pieces[0] is None else torch.cat(pieces).contiguous())
        start = 0
        for part in parts:
            part.use_rows(whole, start)
            start += part.out_features
        return whole

    def use_rows(self, whole: Int8WeightLinear, start: int) -> None:
        """Read this layer's weights from rows start... of `whole` (which holds the same values)."""
        end = start + self.out_features
        self.q, self.scale = whole.q[start:end], whole.scale[start:end]
        if self.bias is not None:
            self.bias = whole.bias[start:end]

    def dequantized(self) -> torch.Tensor:
        """The fp32 weight this layer computes with."""
        return self.q.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = fused_product(x.reshape(-1, self.in_features).float(), self.q, self.scale, self.bias)
        return out.view(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, fp32 scale per row"


def _linears(model: OPTForCausalLM) -> list[tuple[str, torch.nn.Module, str]]:
    """(weight's name, parent, attribute) of every Linear the decode reads: each layer's six, and lm_head (whose
    weight is the token table's where the two are tied)."""
    decoder = model.model.decoder
    tied = model.lm_head.weight is decoder.embed_tokens.weight
    found = [("model.decoder.embed_tokens.weight" if tied else "lm_head.weight", model, "lm_head")]
    for index, layer in enumerate(decoder.layers):
        prefix = f"model.decoder.layers.{index}."
        found += [(f"{prefix}self_attn.{name}.weight", layer.self_attn, name)
                  for name in ("q_proj", "k_proj", "v_proj", "out_proj")]
        found += [(f"{prefix}{name}.weight", layer, name) for name in ("fc1", "fc2")]
    return found


def quantize_weights_int8(model: OPTForCausalLM,
                          stored: Callable[[str], RowReader | None] = lambda name: None) -> OPTForCausalLM:
    """Replace every Linear of `model` (on the CPU) with an `Int8WeightLinear`, in place, one at a time (the
    weight is freed as its int8 copy is made), and make what stays floating point fp32. `stored(name)` reads
    a weight from its file where it can: its pages are then never held, which matters where the model was
    loaded lazily (safetensors) or in a smaller dtype. lm_head's tie to the token table is broken: the table
    stays fp32 for the lookup, lm_head gets its own int8 copy."""
    matvec_kernel()  # built now, while loading, rather than in the middle of the first reply
    for weight_name, parent, name in _linears(model):
        linear = getattr(parent, name)
        if isinstance(linear, torch.nn.Linear):
            setattr(parent, name, Int8WeightLinear(linear, stored(weight_name)))
    model.config.tie_word_embeddings = False
    table = model.model.decoder.embed_tokens
    read = stored("model.decoder.embed_tokens.weight")
    if read is not None:  # the table in memory of its own (as the plan counts it), not pages of the file's map
        table.weight = torch.nn.Parameter(_fp32_copy(read, table.num_embeddings), requires_grad=False)
    return model.float()


def _blocks(read: RowReader, rows: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, end, those rows as a new fp32 tensor) over the matrix `read` reads, about 1 MiB at a time."""
    step = max(1, _READ_BLOCK_BYTES // (4 * read(0, 1).shape[1]))
    for start in range(0, rows, step):
        end = min(start + step, rows)
        yield start, end, read(start, end).to(torch.float32, copy=True)


def _fp32_copy(read: RowReader, rows: int) -> torch.Tensor:
    """The matrix `read` reads, as fp32, a block of rows at a time."""
    copy = None
    for start, end, block in _blocks(read, rows):
        if copy is None:
            copy = torch.empty(rows, block.shape[1], dtype=torch.float32)
        copy[start:end] = block
    return copy


def is_int8_weights(model: OPTForCausalLM) -> bool:
    """The model's Linears are weight-only int8 (`quantize_weights_int8`)."""
    return isinstance(model.lm_head, Int8WeightLinear)
