"""The size table and its memory arithmetic against the real transformers modules."""

import pytest
import torch
from tiny_models import tiny_config, tiny_model
from transformers import DynamicCache, OPTForCausalLM

from helpers.errors import UnknownModelError
from helpers.generation.backends.loops import CACHE_ARG
from helpers.memory.bytes import kv_cache_bytes_per_token, weight_bytes
from helpers.opt.sizes import SIZES, find_size, get_size, size_from_config


@pytest.mark.parametrize("name", list(SIZES))
def test_parameter_count_matches_transformers_on_meta_device(name):
    size = SIZES[name]
    with torch.device("meta"):
        model = OPTForCausalLM(size.config())
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight  # tied, counted once
    assert size.parameter_count() == sum(p.numel() for p in model.parameters())
    assert weight_bytes(size, "float16") == 2 * size.parameter_count()
    assert weight_bytes(size, torch.float32) == 4 * size.parameter_count()


def test_known_parameter_counts():
    # Published figures: 125.2M, 331.2M (350m), 1.316B, 6.658B, 65.7B.
    assert SIZES["opt-125m"].parameter_count() == 125_239_296
    assert SIZES["opt-350m"].parameter_count() == 331_196_416
    assert round(SIZES["opt-1.3b"].parameter_count() / 1e9, 3) == 1.316
    assert round(SIZES["opt-6.7b"].parameter_count() / 1e9, 3) == 6.658
    assert round(SIZES["opt-66b"].parameter_count() / 1e9, 1) == 65.7


def test_350m_is_post_layer_norm_with_projections():
    config = SIZES["opt-350m"].config()
    assert config.do_layer_norm_before is False and config.word_embed_proj_dim == 512
    with torch.device("meta"):
        model = OPTForCausalLM(config)
    assert model.model.decoder.project_in is not None and model.model.decoder.final_layer_norm is None
    with torch.device("meta"):
        big = OPTForCausalLM(SIZES["opt-13b"].config())
    assert big.model.decoder.project_in is None and big.model.decoder.final_layer_norm is not None


@pytest.mark.parametrize("variant", ["pre-ln", "post-ln"])
def test_kv_cache_bytes_per_token_matches_a_real_cache(variant):
    model = tiny_model(variant)
    size = size_from_config(model.config)
    cache = DynamicCache(config=model.config)
    tokens = 37
    with torch.no_grad():
        model(torch.randint(4, 1000, (1, tokens)), use_cache=True, **{CACHE_ARG: cache})
    stored = sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
                 for layer in cache.layers)
    assert stored == tokens * kv_cache_bytes_per_token(size, "float32")
    assert kv_cache_bytes_per_token(SIZES["opt-66b"], "float16") == 2 * 64 * 9216 * 2


def test_quantized_weight_bytes_are_smaller_but_keep_fp16_embeddings():
    size = SIZES["opt-13b"]
    fp16, int8, nf4 = (weight_bytes(size, d) for d in ("float16", "int8", "nf4"))
    assert nf4 < int8 < fp16
    embeddings = size.vocab_size * size.word_embed_proj_dim * 2
    assert nf4 > embeddings  # the token table stays in fp16
    assert 0.5 < int8 / fp16 < 0.56 and 0.25 < nf4 / fp16 < 0.32


@pytest.mark.parametrize("name, expected", [
    ("opt-1.3b", "opt-1.3b"), ("facebook/opt-1.3b", "opt-1.3b"), ("1.3b", "opt-1.3b"), ("OPT-350M", "opt-350m"),
    ("patrickvonplaten/opt_metaseq_350m", "opt-350m"), ("opt-6700m", "opt-6.7b"),
])
def test_find_size_accepts_names_hub_ids_and_metaseq_repos(name, expected):
    assert find_size(name).name == expected


def test_unknown_size_lists_the_sizes():
    assert find_size("opt-999b") is None
    with pytest.raises(UnknownModelError, match="opt-125m, opt-350m.*opt-175b"):
        get_size("opt-999b")
    assert find_size("opt-175b").heads == 96 and not find_size("opt-175b").on_hub  # Meta's files, on request


def test_size_from_config_recognizes_real_sizes_and_describes_others():
    assert size_from_config(SIZES["opt-2.7b"].config()).name == "opt-2.7b"
    tiny = size_from_config(tiny_config("post-ln"), name="tiny")
    assert tiny.name == "tiny" and tiny.has_projections and not tiny.pre_layer_norm
