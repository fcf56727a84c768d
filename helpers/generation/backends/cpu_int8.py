"""Weight-only int8 for the CPU: one byte per weight, one fp32 scale per output row, fp32 arithmetic."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import OPTForCausalLM

_ROWS_PER_BLOCK = 2048  # rows dequantized at a time: a block of fp32 stays small (lm_head has 50272 rows)


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, fp32 scale per row): each row scaled so that its largest magnitude is 127."""
    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


class Int8WeightLinear(torch.nn.Module):
    """A Linear whose weight is stored as int8 with a per-row scale; inputs and outputs stay fp32.
    Its products are those of the dequantized weight `q * scale` (up to fp32 rounding: the scale is applied to
    the product, so each block of rows is converted from int8 once, with no fp32 weight kept)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_rows(linear.weight)
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
        flat = x.reshape(-1, self.in_features).float()
        out = torch.empty(flat.shape[0], self.out_features, dtype=torch.float32)
        for start in range(0, self.out_features, _ROWS_PER_BLOCK):  # x @ q.T, then each row's scale
            end = min(start + _ROWS_PER_BLOCK, self.out_features)
            out[:, start:end] = F.linear(flat, self.q[start:end].float())
        out.mul_(self.scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.view(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, fp32 scale per row"


def _linears(model: OPTForCausalLM) -> list[tuple[torch.nn.Module, str]]:
    """(parent, attribute) of every Linear the decode reads: each layer's six, and lm_head."""
    found = [(model, "lm_head")]
    for layer in model.model.decoder.layers:
        found += [(layer.self_attn, name) for name in ("q_proj", "k_proj", "v_proj", "out_proj")]
        found += [(layer, "fc1"), (layer, "fc2")]
    return found


def quantize_weights_int8(model: OPTForCausalLM) -> OPTForCausalLM:
    """Replace every Linear of `model` (fp32, on the CPU) with an `Int8WeightLinear`, in place, one at a time
    (the fp32 weight is freed as its int8 copy is made). lm_head's tie to the token table is broken: the
    table stays fp32 for the lookup, lm_head gets its own int8 copy."""
    model.config.tie_word_embeddings = False
    for parent, name in _linears(model):
        linear = getattr(parent, name)
        if isinstance(linear, torch.nn.Linear):
            setattr(parent, name, Int8WeightLinear(linear))
    return model


def is_int8_weights(model: OPTForCausalLM) -> bool:
    """The model's Linears are weight-only int8 (`quantize_weights_int8`)."""
    return isinstance(model.lm_head, Int8WeightLinear)
