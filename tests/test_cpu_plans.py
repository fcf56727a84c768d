"""The CPU's bf16 and weight-only int8 plans: their tokens against references, the refusal, the planner's entries."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_model

from helpers import environment
from helpers.analysis.bench_methods import METHODS, BenchContext
from helpers.generation.backends.cpu_engine import CpuEngine, supported
from helpers.generation.backends.cpu_int8 import Int8WeightLinear, quantize_rows, quantize_weights_int8
from helpers.generation.backends.registry import choose_backend
from helpers.generation.run import generate
from helpers.generation.settings import GenerationSettings
from helpers.loading.model import load_model
from helpers.memory.bytes import weight_bytes
from helpers.memory.planner import NO_CPU_BF16, NO_CPU_INT8_KERNEL, TIERS, Budget, choose, plan
from helpers.opt.sizes import get_size, layer_parameters, parameter_breakdown

PROMPT = [2, 1437, 16, 10, 1296, 9, 5, 232]  # token ids: no tokenizer needed
NEW = 24
GREEDY = GenerationSettings.greedy(max_new_tokens=NEW, min_new_tokens=NEW)


def reference_tokens(model) -> list[int]:
    """transformers' own greedy decoding of the model as it is."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([PROMPT]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    return out[0, len(PROMPT):].tolist()


def engine_run(model) -> tuple[list[int], list[torch.Tensor]]:
    """The CPU engine's greedy tokens and the logits each came from."""
    sequence = CpuEngine(model).sequence(len(PROMPT), NEW)
    logits, tokens, seen = sequence.prefill(PROMPT), [], []
    for _ in range(NEW):
        seen.append(logits[0])
        tokens.append(int(logits.argmax()))
        logits = sequence.step(tokens[-1])
    return tokens, seen


def hf_logits(model, tokens: list[int]) -> torch.Tensor:
    """transformers' next-token logits [new, vocab] along the given tokens (teacher-forced)."""
    with torch.inference_mode():
        return model(torch.tensor([PROMPT + tokens])).logits[0, len(PROMPT) - 1:-1].float()


@pytest.mark.parametrize("variant", ["pre-ln", "post-ln"])
def test_bf16_engine_gives_the_tokens_of_its_weights_in_fp32_arithmetic(variant):
    """bf16-cpu rounds the weights only: its reference is transformers' fp32 forward over the same bf16 values."""
    model = tiny_model(variant, seed=1).to(torch.bfloat16)
    widened = copy.deepcopy(model).float()  # the same weights, exactly, in fp32
    assert supported(model, 1) and choose_backend("auto", model, GREEDY, 1).name == "cpu-fast"
    tokens, logits = engine_run(model)
    assert tokens == reference_tokens(widened)
    difference = (torch.stack(logits) - hf_logits(widened, tokens)).abs().max().item()
    print(f"{variant}: largest logit difference from transformers' fp32 forward of the bf16 weights: {difference:.2e}")
    assert difference < 1e-3
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # the engine leaves the model's weights alone


@pytest.mark.parametrize("variant", ["pre-ln", "post-ln"])
def test_int8_weights_give_the_tokens_of_their_own_dequantized_weights(variant):
    fp32 = tiny_model(variant, seed=2)
    dequantized = copy.deepcopy(fp32)
    quantized = quantize_weights_int8(copy.deepcopy(fp32))
    for module, original in zip(quantized.modules(), dequantized.modules()):
        if isinstance(module, Int8WeightLinear):  # a new tensor: lm_head's tie to the token table is cut
            original.weight = torch.nn.Parameter(module.dequantized(), requires_grad=False)
    dequantized.config.tie_word_embeddings = False
    assert supported(quantized, 1) and choose_backend("auto", quantized, GREEDY, 1).name == "cpu-fast"
    tokens, logits = engine_run(quantized)
    assert tokens == reference_tokens(dequantized) == reference_tokens(quantized)  # engine, and transformers' forward
    difference = (torch.stack(logits) - hf_logits(dequantized, tokens)).abs().max().item()
    print(f"{variant}: largest logit difference from the dequantized fp32 model: {difference:.2e}")
    assert difference < 1e-3
    assert torch.equal(quantized.model.decoder.embed_tokens.weight, fp32.model.decoder.embed_tokens.weight)


def test_rows_are_scaled_to_127_and_q_k_v_share_one_packed_copy():
    weight = torch.randn(5, 7)
    q, scale = quantize_rows(weight)
    assert q.dtype == torch.int8 and q.abs().amax(dim=1).tolist() == [127] * 5
    assert torch.allclose(q.float() * scale[:, None], weight, atol=scale.max().item() / 2 + 1e-7)
    model = quantize_weights_int8(tiny_model("pre-ln", seed=3))
    CpuEngine(model)
    attn = model.model.decoder.layers[0].self_attn
    assert attn.k_proj.q.data_ptr() == attn.q_proj.q.data_ptr() + attn.q_proj.q.numel()  # slices of one buffer


def test_generate_runs_the_new_plans_and_its_automatic_choice_stays_fp32(tokenizer):
    model = tiny_model("pre-ln", seed=4)
    int8 = generate(quantize_weights_int8(copy.deepcopy(model)), tokenizer, "Hello there", GREEDY)
    assert len(int8.token_ids) == NEW and int8.method == "cpu-fast"
    auto = plan("opt-125m", Budget(cpu_bytes=16 * 1024**3, cpu_bf16=True))
    assert choose(auto).plan == "fp32-cpu"  # exact unless the user asks


def test_bf16_on_a_cpu_without_the_kernels_instructions_runs_and_says_what_it_costs(monkeypatch, tiny_pre_folder):
    """Without AVX2 and FMA (an older x86, or an ARM CPU) bf16 weights are widened in memory, no faster than
    fp32: an explicit request runs; the plan's note and a warning say it gains nothing and rounds more."""
    monkeypatch.setattr(environment, "cpu_flags", lambda: frozenset({"sse4_2", "avx"}))
    assert not environment.detect().cpu_bf16
    option = next(o for o in plan("opt-125m", Budget.of_machine()) if o.plan == "bf16-cpu")
    assert option.fits and option.available and NO_CPU_BF16 in option.notes
    assert not option.usable and option.auto_skips == NO_CPU_BF16  # auto never picks it here
    for kwargs in ({"device": "cpu", "dtype": "bfloat16"}, {"plan": "bf16-cpu"}):
        with pytest.warns(UserWarning, match=r"lacks AVX2 and FMA.*no faster than fp32"):
            loaded = load_model(str(tiny_pre_folder), **kwargs)
        assert loaded.model.dtype == torch.bfloat16 and loaded.info.dtype == "bfloat16"


def test_bf16_is_planned_on_a_cpu_with_avx2_and_fma(monkeypatch, tiny_pre_folder):
    monkeypatch.setattr(environment, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f"}))
    assert environment.detect().cpu_bf16
    option = next(o for o in plan("opt-125m", Budget.of_machine()) if o.plan == "bf16-cpu")
    assert option.usable and not option.notes
    loaded = load_model(str(tiny_pre_folder), plan="bf16-cpu")
    assert loaded.info.plan.plan == "bf16-cpu" and loaded.model.dtype == torch.bfloat16
    assert len(loaded.generate("Hello", GREEDY).token_ids) == NEW


def test_int8_weights_plan_loads_quantized(tiny_pre_folder):
    loaded = load_model(str(tiny_pre_folder), plan="int8-weights-cpu")
    assert loaded.info.dtype == "int8 (weights)" and isinstance(loaded.model.lm_head, Int8WeightLinear)
    assert isinstance(loaded.model.model.decoder.layers[1].fc2, Int8WeightLinear)
    assert len(loaded.generate("Hello", GREEDY).token_ids) == NEW


def test_planner_entries_for_the_cpu_plans():
    size = get_size("opt-125m")
    options = {o.plan: o for o in plan(size, Budget(cpu_bytes=16 * 1024**3, cpu_bf16=True))}
    assert {"fp32-cpu", "bf16-cpu", "int8-cpu", "int8-weights-cpu"} <= set(options) and all(
        p in TIERS for p in options)
    assert options["bf16-cpu"].usable and options["bf16-cpu"].dtype == "bfloat16"
    assert options["int8-weights-cpu"].dtype == "int8-weights" and "int8 weights" in options["int8-weights-cpu"].description
    saved = weight_bytes(size, "float32") - weight_bytes(size, "int8-weights")
    layer = layer_parameters(size)  # a byte a weight instead of four, plus an fp32 scale a row
    assert saved == 3 * parameter_breakdown(size).layer_matrices - 4 * size.layers * layer.rows
    assert options["bf16-cpu"].cpu_bytes < options["fp32-cpu"].cpu_bytes
    assert options["int8-weights-cpu"].cpu_bytes < options["fp32-cpu"].cpu_bytes
    assert options["int8-weights-cpu"].quality != options["int8-cpu"].quality
    without = {o.plan: o for o in plan(size, Budget(cpu_bytes=16 * 1024**3))}
    assert without["bf16-cpu"].available and NO_CPU_BF16 in without["bf16-cpu"].notes


@pytest.mark.parametrize("kernel", [True, False])
def test_where_only_int8_fits_auto_takes_the_int8_the_cpu_runs_best(kernel):
    """With the fused kernel, int8-weights-cpu (faster, and more of fp32's text: docs/speed.md) before torch's
    dynamic int8; without it, its weights would be widened in memory, so the dynamic int8 goes first."""
    size = get_size("opt-6.7b")
    budget = Budget(cpu_bytes=14 * 1024**3, cpu_bf16=kernel)  # fp32 (27 GB of weights) and bf16 (13 GB) do not fit
    options = {o.plan: o for o in plan(size, budget)}
    assert not options["bf16-cpu"].fits and options["int8-weights-cpu"].fits and options["int8-cpu"].fits
    assert choose(list(options.values())).plan == ("int8-weights-cpu" if kernel else "int8-cpu")
    assert (NO_CPU_INT8_KERNEL in options["int8-weights-cpu"].notes) != kernel


def test_bench_rows_prepare_the_new_plans(tokenizer):
    context = BenchContext(tiny_model("pre-ln", seed=5), tokenizer, "tiny")
    bf16 = METHODS["auto+bf16-cpu"].prepare(context)
    int8 = METHODS["auto+int8-weights-cpu"].prepare(context)
    assert bf16.dtype == torch.bfloat16 and isinstance(int8.lm_head, Int8WeightLinear)
    assert context.model.dtype == torch.float32 and type(context.model.lm_head) is torch.nn.Linear  # untouched
    assert METHODS["auto+bf16-cpu"].default and METHODS["auto+int8-weights-cpu"].devices == ("cpu",)
