"""The OPT size table (the paper's Table 1 as released), its token ids, and parameter counts per size."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import OPTConfig

from ..errors import UnknownModelError

VOCAB_SIZE = 50272  # the 50265 BPE entries padded to a multiple of 8 (ids 50265..50271 have no token)
MAX_POSITIONS = 2048
POSITION_OFFSET = 2  # OPT's learned position table has max_positions + 2 rows
BOS_TOKEN_ID = 2  # "</s>": OPT starts every sequence with it
PAD_TOKEN_ID = 1
EOS_TOKEN_ID = 2


@dataclass(frozen=True)
class OPTSize:
    """One row of the OPT paper's Table 1, as released."""

    name: str
    layers: int
    heads: int
    d_model: int
    ffn: int
    word_embed_proj_dim: int
    pre_layer_norm: bool
    metaseq_repo: str | None = None
    vocab_size: int = VOCAB_SIZE
    max_positions: int = MAX_POSITIONS
    on_hub: bool = True  # False: Meta sends its weights on request (OPT-175B); docs/opt-175b.md converts them

    @property
    def hub_id(self) -> str:
        return f"facebook/{self.name}"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def has_projections(self) -> bool:
        """True for the 350M shape: embeddings of width 512 projected in and out of d_model."""
        return self.word_embed_proj_dim != self.d_model

    def config(self, **overrides) -> OPTConfig:
        """The `transformers.OPTConfig` of this size."""
        return opt_config(self, **overrides)

    def parameter_count(self) -> int:
        return parameter_count(self)


_METASEQ = "patrickvonplaten/opt_metaseq_{}"
SIZES: dict[str, OPTSize] = {
    s.name: s
    for s in [
        OPTSize("opt-125m", 12, 12, 768, 3072, 768, True, _METASEQ.format("125m")),
        OPTSize("opt-350m", 24, 16, 1024, 4096, 512, False, _METASEQ.format("350m")),
        OPTSize("opt-1.3b", 24, 32, 2048, 8192, 2048, True, _METASEQ.format("1300m")),
        OPTSize("opt-2.7b", 32, 32, 2560, 10240, 2560, True, _METASEQ.format("2700m")),
        OPTSize("opt-6.7b", 32, 32, 4096, 16384, 4096, True, _METASEQ.format("6700m")),
        OPTSize("opt-13b", 40, 40, 5120, 20480, 5120, True, _METASEQ.format("13000m")),
        OPTSize("opt-30b", 48, 56, 7168, 28672, 7168, True, _METASEQ.format("30000m")),
        OPTSize("opt-66b", 64, 72, 9216, 36864, 9216, True, None),
    ]
}
# Not on the Hugging Face Hub, so not among the sizes offered for download (SIZES); known by name to the
# planner and the converter (96 layers, width 12288, 96 heads, ffn 49152: the OPT paper's Table 1).
OPT_175B = OPTSize("opt-175b", 96, 96, 12288, 49152, 12288, True, None, on_hub=False)
_RELEASE_ONLY = {OPT_175B.name: OPT_175B}
_ALIASES = {"opt-1300m": "opt-1.3b", "opt-2700m": "opt-2.7b", "opt-6700m": "opt-6.7b"}


def find_size(name: str) -> OPTSize | None:
    """The size for a short name, a `facebook/opt-*` hub id or a metaseq repo id; None if it is none of them."""
    key = name.strip().lower().rstrip("/")
    for size in SIZES.values():
        if key in (size.hub_id, size.metaseq_repo):
            return size
    key = key.removeprefix("facebook/")
    if not key.startswith("opt-"):
        key = "opt-" + key
    key = _ALIASES.get(key, key)
    return SIZES.get(key) or _RELEASE_ONLY.get(key)


def get_size(name: str) -> OPTSize:
    """Like `find_size`, but an unknown name raises `UnknownModelError` listing the sizes."""
    size = find_size(name)
    if size is None:
        raise UnknownModelError(
            f"'{name}' is not an OPT size. Known sizes: {', '.join([*SIZES, *_RELEASE_ONLY])}."
        )
    return size


# Each OPTSize field and the OPTConfig field that holds it.
_CONFIG_FIELDS = {"layers": "num_hidden_layers", "heads": "num_attention_heads", "d_model": "hidden_size",
                  "ffn": "ffn_dim", "word_embed_proj_dim": "word_embed_proj_dim", "pre_layer_norm": "do_layer_norm_before",
                  "vocab_size": "vocab_size", "max_positions": "max_position_embeddings"}


def opt_config(size: OPTSize, **overrides) -> OPTConfig:
    """The `transformers.OPTConfig` for a size; keyword arguments override fields (e.g. dropout)."""
    fields = dict(
        **{config_field: getattr(size, ours) for ours, config_field in _CONFIG_FIELDS.items()},
        activation_function="relu",
        enable_bias=True,
        dropout=0.1,
        attention_dropout=0.0,
        pad_token_id=PAD_TOKEN_ID,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        tie_word_embeddings=True,
    )
    fields.update(overrides)
    return OPTConfig(**fields)


def size_from_config(config: OPTConfig, name: str = "custom") -> OPTSize:
    """An `OPTSize` describing any OPT config (a tiny test model, a fine-tune, a converted checkpoint):
    the published size when the architecture is one, else a new description named `name`."""
    described = OPTSize(name=name, **{ours: getattr(config, config_field) for ours, config_field in _CONFIG_FIELDS.items()})

    def shape(size: OPTSize) -> tuple:
        return size.layers, size.d_model, size.heads, size.ffn, size.word_embed_proj_dim

    return next((size for size in SIZES.values() if shape(size) == shape(described)), described)


@dataclass(frozen=True)
class ParameterBreakdown:
    """Parameters by where they live: the big matrices of the decoder layers and the rest."""

    layer_matrices: int  # q, k, v, out, fc1, fc2 weights: what 8/4-bit quantization shrinks
    embeddings: int  # token and position tables (the token table doubles as lm_head: tied)
    projections: int  # project_in / project_out (350M only)
    small: int  # biases and layer norms

    @property
    def total(self) -> int:
        return self.layer_matrices + self.embeddings + self.projections + self.small


@dataclass(frozen=True)
class LayerParameters:
    """One decoder layer's parameters: its matrices (q, k, v, out, fc1, fc2), their output rows, the rest."""

    matrices: int
    rows: int  # int8 keeps one fp32 scale per output row
    small: int  # attention biases, fc1/fc2 biases, two layer norms


def layer_parameters(size: OPTSize) -> LayerParameters:
    d, f = size.d_model, size.ffn
    return LayerParameters(matrices=4 * d * d + 2 * d * f, rows=4 * d + f + d, small=4 * d + f + d + 2 * (2 * d))


def parameter_breakdown(size: OPTSize) -> ParameterBreakdown:
    d, layer = size.d_model, layer_parameters(size)
    final_norm = 2 * d if size.pre_layer_norm else 0
    return ParameterBreakdown(
        layer_matrices=size.layers * layer.matrices,
        embeddings=size.vocab_size * size.word_embed_proj_dim + (size.max_positions + POSITION_OFFSET) * d,
        projections=2 * d * size.word_embed_proj_dim if size.has_projections else 0,
        small=size.layers * layer.small + final_norm,
    )


def parameter_count(size: OPTSize) -> int:
    """Parameters of `OPTForCausalLM` for this size (lm_head is tied to the token embeddings)."""
    return parameter_breakdown(size).total
