"""The fused int8 and bf16 kernels against torch's products of the same weights in fp64, their fallback and the
messages where they cannot be built, and quantizing from the files (fp16, sharded, unprefixed) as from the model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tiny_models import save_tiny_model, tiny_model

from helpers.environment import cpu_flags
from helpers.generation.backends import cpu_engine, matvec_kernel
from helpers.generation.backends.cpu_engine import CpuEngine
from helpers.generation.backends.cpu_int8 import Int8WeightLinear, quantize_rows, quantize_weights_int8
from helpers.generation.backends.matvec_kernel import FUSED_MAX_ROWS, NEEDED_FLAGS, MatvecKernel
from helpers.loading.model import load_model
from helpers.loading.weight_files import SafetensorsRows


def _layer(out_features: int, in_features: int, bias: bool, seed: int = 0) -> Int8WeightLinear:
    torch.manual_seed(seed)
    return Int8WeightLinear(torch.nn.Linear(in_features, out_features, bias=bias))


def _reference(layer: Int8WeightLinear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.dequantized().double(), None if layer.bias is None else layer.bias.double())


def test_the_kernel_builds_on_a_cpu_with_avx2_and_fma():
    kernel = matvec_kernel.matvec_kernel()
    if set(NEEDED_FLAGS) <= cpu_flags():
        assert kernel.module is not None, kernel.why_not
    else:
        assert kernel.module is None and "lacks" in kernel.why_not


@pytest.mark.parametrize("shape", [(7, 70), (64, 96), (33, 512), (300, 40)])  # odd rows, tails under 32 columns
@pytest.mark.parametrize("rows", [1, 2, 5, FUSED_MAX_ROWS, FUSED_MAX_ROWS + 1])
@pytest.mark.parametrize("bias", [True, False])
def test_int8_layers_compute_the_product_of_their_dequantized_weights(shape, rows, bias):
    layer = _layer(*shape, bias=bias)
    x = torch.randn(rows, shape[1])
    with torch.inference_mode():
        got = layer(x)
    want = _reference(layer, x.double())
    assert got.dtype == torch.float32 and got.shape == (rows, shape[0])
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_without_the_kernel_the_layers_give_the_same_products(monkeypatch):
    layer, x = _layer(96, 200, bias=True), torch.randn(3, 4, 200)  # batch and sequence dimensions kept
    with torch.inference_mode():
        fused = layer(x)
        monkeypatch.setattr(matvec_kernel, "matvec_kernel", lambda: MatvecKernel(None, "switched off by the test"))
        fallback = layer(x)
    assert fused.shape == fallback.shape == (3, 4, 96)
    assert torch.allclose(fused, fallback, rtol=1e-5, atol=1e-5 * fallback.abs().max().item())


def _bf16_product(weight: torch.Tensor, bias: torch.Tensor | None):
    """The engine's product for a bf16 Linear (the kernel for a few rows, widened blocks for more)."""
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return cpu_engine._of(linear, numpy_blas=False)


@pytest.mark.parametrize("shape", [(7, 70), (64, 96), (33, 512), (300, 40), (2100, 64)])  # tails; over one block
@pytest.mark.parametrize("rows", [1, 3, FUSED_MAX_ROWS, FUSED_MAX_ROWS + 1])
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_weights_give_their_product_in_fp32_arithmetic(shape, rows, bias):
    torch.manual_seed(1)
    weight = torch.randn(shape).to(torch.bfloat16)
    b = torch.randn(shape[0]).to(torch.bfloat16) if bias else None
    x = torch.randn(rows, shape[1])
    got = _bf16_product(weight, b)(x)
    want = F.linear(x.double(), weight.double(), None if b is None else b.double())  # the bf16 values, exactly
    assert got.dtype == torch.float32 and got.shape == (rows, shape[0])
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_bf16_products_without_the_kernel_are_the_same(monkeypatch):
    weight, x = torch.randn(300, 200).to(torch.bfloat16), torch.randn(2, 200)
    fused = _bf16_product(weight, None)(x)
    monkeypatch.setattr(matvec_kernel, "matvec_kernel", lambda: MatvecKernel(None, "switched off by the test"))
    fallback = _bf16_product(weight, None)(x)
    assert torch.allclose(fused, fallback, rtol=1e-5, atol=1e-5 * fallback.abs().max().item())


def test_the_kernel_refuses_what_it_cannot_compute():
    kernel = matvec_kernel.matvec_kernel()
    if kernel.module is None:
        pytest.skip(f"no kernel on this CPU: {kernel.why_not}")  # the test above covers the fallback there
    x = torch.randn(2, 16)
    with pytest.raises(RuntimeError, match="shapes"):
        kernel.bf16_linear(x, torch.randn(4, 15).to(torch.bfloat16), None)
    with pytest.raises(RuntimeError, match="w is bf16"):
        kernel.bf16_linear(x, torch.randn(4, 16), None)
    with pytest.raises(RuntimeError, match="one per output row"):
        kernel.bf16_linear(x, torch.randn(4, 16).to(torch.bfloat16), torch.zeros(3))
    with pytest.raises(RuntimeError, match="scale per output row"):
        kernel.int8_linear(x, torch.zeros(4, 16, dtype=torch.int8), torch.ones(3), None)


def test_a_bf16_model_keeps_its_weights_and_its_engine_reads_them_in_place():
    model = tiny_model("pre-ln", seed=5).to(torch.bfloat16)
    before = {name: p.clone() for name, p in model.named_parameters()}
    engine = CpuEngine(model)
    assert engine.dtype == torch.float32
    sequence = engine.sequence(3, 2)
    assert sequence.cache.dtype == torch.float32 and sequence.prefill([2, 100, 200]).dtype == torch.float32
    for name, p in model.named_parameters():
        assert p.dtype == torch.bfloat16 and torch.equal(p, before[name]), name


def _unbuilt(monkeypatch, **patches) -> str:
    """The warning matvec_kernel() gives with `patches` applied to the kernel module (the cache cleared around)."""
    for name, value in patches.items():
        monkeypatch.setattr(matvec_kernel, name, value)
    matvec_kernel.matvec_kernel.cache_clear()
    try:
        with pytest.warns(UserWarning) as caught:
            kernel = matvec_kernel.matvec_kernel()
    finally:
        matvec_kernel.matvec_kernel.cache_clear()
    assert kernel.module is None
    message = str(caught[0].message)
    assert "int8-weights-cpu and bf16-cpu" in message and "the same text, slower" in message
    assert kernel.why_not in message
    return kernel.why_not


def test_a_cpu_without_avx2_is_told_why_the_kernel_is_not_used(monkeypatch):
    assert _unbuilt(monkeypatch, cpu_flags=lambda: frozenset({"sse4_2"})) == "this CPU lacks avx2 and fma"


def test_a_failing_build_is_told_what_to_install(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty cache: a build is needed

    def failing(**_):
        raise RuntimeError("Error building extension 'opt_notebooks_weight_matvec'\ng++: not found")

    monkeypatch.setattr(cpp_extension, "load", failing)
    why = _unbuilt(monkeypatch, cpu_flags=lambda: frozenset(NEEDED_FLAGS))
    assert why.startswith("it could not be built: Error building extension") and "C++ compiler" in why

    def no_ninja():
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp_extension, "verify_ninja_availability", no_ninja)
    assert "pip install ninja" in _unbuilt(monkeypatch, cpu_flags=lambda: frozenset(NEEDED_FLAGS))


# ------------------------------------------------------------------------------ quantizing from the files


def _quantized_state(model) -> dict[str, torch.Tensor]:
    return {name: value for name, value in model.state_dict().items()
            if name.endswith((".q", ".scale")) or "embed" in name}


def _assert_same_quantization(from_files, from_model):
    got, want = _quantized_state(from_files), _quantized_state(from_model)
    assert got.keys() == want.keys() and len(got) > 10
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("stored", ["float32", "float16"])
def test_the_int8_plan_quantizes_from_the_file_what_it_would_from_the_model(tmp_path, stored):
    folder = save_tiny_model(tmp_path / "m", "post-ln", seed=2)
    fp32 = tiny_model("post-ln", seed=2)
    if stored == "float16":
        fp32.half().save_pretrained(folder)
        fp32 = fp32.float()  # the fp16 values, widened: what the old loader quantized
    loaded = load_model(str(folder), plan="int8-weights-cpu")
    assert loaded.model.model.decoder.embed_tokens.weight.dtype == torch.float32
    _assert_same_quantization(loaded.model, quantize_weights_int8(fp32))
    assert len(loaded.generate("Hello", max_new_tokens=4, do_sample=False).token_ids) == 4


def test_sharded_and_unprefixed_files_are_read_by_name(tmp_path):
    model = tiny_model("pre-ln", seed=4)
    state = {name: value.contiguous() for name, value in model.state_dict().items() if name != "lm_head.weight"}
    first = {name.removeprefix("model."): value for name, value in list(state.items())[:20]}  # old hub names
    second = dict(list(state.items())[20:])
    save_file(first, tmp_path / "part-1.safetensors")
    save_file(second, tmp_path / "part-2.safetensors")
    weight_map = {**dict.fromkeys(first, "part-1.safetensors"), **dict.fromkeys(second, "part-2.safetensors")}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    rows = SafetensorsRows.of_folder(tmp_path)
    for name, value in state.items():
        assert rows.name_of(name) is not None, name
        if value.dim() == 2:
            assert torch.equal(rows.reader(name)(1, 3), value[1:3]), name
    assert rows.reader("model.decoder.layers.9.fc1.weight") is None  # not in the files: read from the model
    from_files = quantize_weights_int8(tiny_model("pre-ln", seed=4), rows.reader)
    _assert_same_quantization(from_files, quantize_weights_int8(model))


def test_a_folder_without_safetensors_is_quantized_from_the_model(tmp_path):
    torch.save(tiny_model("pre-ln").state_dict(), tmp_path / "pytorch_model.bin")
    assert SafetensorsRows.of_folder(tmp_path) is None


def test_quantize_rows_reads_a_block_at_a_time_and_leaves_its_input_alone():
    weight = torch.randn(5000, 300)
    before = weight.clone()
    reads = []

    def reader(start, end):
        reads.append(end - start)
        return weight[start:end].half()

    q, scale = quantize_rows(reader, 5000)
    assert max(reads) * 300 * 4 <= 1 << 20 and sum(reads) == 5000 + 1  # blocks of 1 MiB in fp32, after one row
    want_q, want_scale = quantize_rows(weight.half().float())
    assert torch.equal(q, want_q) and torch.equal(scale, want_scale) and torch.equal(weight, before)
