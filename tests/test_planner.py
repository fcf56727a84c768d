"""The memory planner: its arithmetic against accelerate and real quantized models, its choices on known
budgets, its device maps for fake GPU budgets, predictions against measurement, and what bad budgets get."""

import json
import os

import pytest
import torch
from accelerate.utils import check_device_map, compute_module_sizes
from transformers import OPTForCausalLM

from helpers import environment
from helpers.cli.main import main
from helpers.errors import ModelLoadError
from helpers.loading.apply_plan import device_map, load_arguments
from helpers.loading.model import load_model
from helpers.memory.bytes import GiB, kv_cache_bytes_per_token, parse_bytes, pieces, weight_bytes
from helpers.memory.planner import Budget, choose, plan
from helpers.opt.sizes import SIZES, size_from_config

T4 = Budget(gpu_bytes=15 * GiB, gpus=1, cpu_bytes=12 * GiB, gpu_name="Tesla T4")


def first_usable(size, budget, **kw):
    return next(o for o in plan(size, budget, **kw) if o.usable)


@pytest.mark.parametrize("text, expected", [
    ("15GiB", 15 * GiB), ("15 GB", 15 * 10**9), ("16000MiB", 16000 * 2**20), ("12G", 12 * 10**9),
    ("512", 512), (2048, 2048), ("1.5GiB", int(1.5 * GiB)),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["lots", "15 parsecs", "GiB", ""])
def test_parse_bytes_refuses_nonsense(bad):
    with pytest.raises(ValueError, match="not a memory size"):
        parse_bytes(bad)


@pytest.mark.parametrize("name", list(SIZES))
@pytest.mark.parametrize("dtype, storage", [(torch.float16, "float16"), (torch.float32, "float32")])
def test_weight_accounting_matches_accelerate_module_sizes(name, dtype, storage):
    with torch.device("meta"):
        model = OPTForCausalLM(SIZES[name].config())
    sizes = compute_module_sizes(model, dtype=dtype)
    for piece in pieces(SIZES[name]):
        assert piece.weight_bytes(storage) == sizes[piece.name], piece.name


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_quantized_accounting_matches_a_bitsandbytes_model(tiny_pre_folder, kind):
    """bitsandbytes quantizes on the CPU too: the planner's bytes are the model's, scales included."""
    from transformers import BitsAndBytesConfig

    config = (BitsAndBytesConfig(load_in_8bit=True) if kind == "int8" else
              BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16))
    model = OPTForCausalLM.from_pretrained(tiny_pre_folder, quantization_config=config, dtype=torch.float16,
                                           device_map={"": "cpu"})
    actual = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    for layer in model.model.decoder.layers:
        for linear in (layer.fc1, layer.fc2, *(getattr(layer.self_attn, p) for p in ("q_proj", "k_proj", "v_proj",
                                                                                       "out_proj"))):
            scales = linear.weight.SCB if kind == "int8" else linear.weight.quant_state.absmax
            actual += scales.numel() * scales.element_size()
    size = size_from_config(model.config)
    predicted = sum(p.weight_bytes("float16" if p.name == "model.decoder.embed_tokens" else kind)
                    for p in pieces(size))
    assert predicted == actual


@pytest.mark.parametrize("storage", ["float32", "float16", "bfloat16", "int8", "nf4"])
def test_the_planner_s_pieces_add_up_to_the_one_weight_bytes(storage):
    for size in SIZES.values():
        assert sum(p.weight_bytes(storage) for p in pieces(size)) == weight_bytes(size, storage), size.name


def test_the_issue_s_t4_facts():
    assert first_usable("opt-6.7b", T4).plan == "fp16"  # 6.7B in fp16 on one T4
    assert first_usable("opt-13b", T4).plan == "int8"  # 13B in 8-bit
    assert not any(o.plan == "fp16" and o.fits for o in plan("opt-13b", T4))
    roomy = Budget(gpu_bytes=15 * GiB, gpus=1, cpu_bytes=100 * GiB, gpu_name="Tesla T4")
    thirty = {o.plan: o for o in plan("opt-30b", roomy)}
    assert not thirty["nf4"].fits and thirty["nf4-cpu-offload"].fits  # 30B: 4-bit with some CPU offload
    two_big = Budget(gpu_bytes=80 * GiB, gpus=2, cpu_bytes=200 * GiB, gpu_name="A100")
    assert first_usable("opt-66b", two_big).plan == "fp16-multi-gpu"  # 66B across GPUs
    two_t4 = Budget(gpu_bytes=15 * GiB, gpus=2, cpu_bytes=30 * GiB, gpu_name="Tesla T4")
    assert first_usable("opt-13b", two_t4).plan == "fp16-multi-gpu"  # the seed's two T4s hold 13B in fp16


def test_options_carry_predictions_and_are_ranked():
    options = plan("opt-13b", T4)
    usable = [o for o in options if o.usable]
    assert options[: len(usable)] == usable  # usable ones first
    for o in options:
        assert o.cpu_bytes > 0 and o.tokens_per_second > 0 and o.speed_class
        if o.gpu_bytes_each:
            assert o.gpu_bytes == max(o.gpu_bytes_each) + GiB // 2
    int8, nf4 = (next(o for o in options if o.plan == m) for m in ("int8", "nf4"))
    assert nf4.gpu_bytes < int8.gpu_bytes and nf4.tokens_per_second > int8.tokens_per_second
    bigger = {o.plan: o for o in plan("opt-13b", T4, context=2048, batch=4)}
    assert bigger["int8"].gpu_bytes > int8.gpu_bytes  # four caches


def test_device_map_across_fake_gpus_is_complete_and_matches_accelerate():
    from accelerate import infer_auto_device_map

    budget = Budget(gpu_bytes=15 * GiB, gpus=2, cpu_bytes=30 * GiB, gpu_name="Tesla T4")
    option = next(o for o in plan("opt-13b", budget) if o.plan == "fp16-multi-gpu")
    with torch.device("meta"):
        model = OPTForCausalLM(SIZES["opt-13b"].config())
    dmap = device_map(option)
    check_device_map(model, dmap)  # every parameter placed
    assert set(dmap.values()) == {0, 1}
    sizes = compute_module_sizes(model, dtype=torch.float16)
    on_gpu = [sum(sizes[m] for m, d in dmap.items() if d == i and m != "lm_head") for i in (0, 1)]
    kv = kv_cache_bytes_per_token(SIZES["opt-13b"], "float16") // SIZES["opt-13b"].layers * 2048
    layers = [sum(1 for m, d in dmap.items() if d == i and ".layers." in m) for i in (0, 1)]
    for i in (0, 1):
        assert option.gpu_bytes_each[i] >= on_gpu[i] + layers[i] * kv
    # accelerate, given the room the plan leaves for weights, splits the layers at the same place or one off
    room = {i: int(15 * GiB - GiB // 2 - (option.gpu_bytes_each[i] - on_gpu[i])) for i in (0, 1)}
    theirs = infer_auto_device_map(model, max_memory={0: room[0] + kv * layers[0], 1: room[1] + 10 * GiB},
                                   no_split_module_classes=["OPTDecoderLayer"], dtype=torch.float16)
    theirs_first = sum(1 for m, d in theirs.items() if d == 0 and ".layers." in m)
    assert abs(theirs_first - layers[0]) <= 1


def test_load_arguments_for_each_kind():
    options = {o.plan: o for o in plan("opt-30b", Budget(gpu_bytes=12 * GiB, gpus=2, cpu_bytes=100 * GiB))}
    assert load_arguments(options["nf4-multi-gpu"])["quantization_config"].load_in_4bit
    options = {o.plan: o for o in plan("opt-30b", Budget(gpu_bytes=15 * GiB, gpus=1, cpu_bytes=100 * GiB))}
    offload = load_arguments(options["nf4-cpu-offload"])
    assert offload["quantization_config"].llm_int8_enable_fp32_cpu_offload and "cpu" in offload["device_map"].values()
    options = {o.plan: o for o in plan("opt-30b", T4)}
    disk = load_arguments(options["disk-offload"], offload_folder="/tmp/x")
    assert disk["offload_folder"] == "/tmp/x" and "disk" in disk["device_map"].values()
    assert load_arguments(options["fp32-cpu"]) == {"dtype": torch.float32}


def test_nothing_fits_says_what_the_smallest_option_needs():
    tiny_budget = Budget(gpu_bytes=2 * GiB, gpus=1, cpu_bytes=4 * GiB, disk_bytes=10 * GiB)
    with pytest.raises(ModelLoadError, match=r"Nothing fits opt-66b .* smallest option, .* needs .* GPU memory"):
        choose(plan("opt-66b", tiny_budget), model="opt-66b", budget=tiny_budget)


def test_a_plan_that_needs_a_missing_package_says_so_and_offers_the_next(monkeypatch):
    import importlib.util

    import helpers.memory.planner as planner

    real = importlib.util.find_spec
    monkeypatch.setattr(planner.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    options = plan("opt-13b", T4)
    int8 = next(o for o in options if o.plan == "int8")
    assert int8.fits and not int8.available and "pip install bitsandbytes" in int8.unavailable_reason
    assert first_usable("opt-13b", T4).plan == "disk-offload"
    with pytest.raises(ModelLoadError, match=r"needs bitsandbytes.*best plan that works here is disk-offload"):
        choose(options, "int8", model="opt-13b")


def test_bitsandbytes_plans_need_a_gpu_on_this_machine(tiny_pre_folder):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match=r"needs a CUDA GPU.*fp32-cpu"):
        load_model(str(tiny_pre_folder), plan="int8")


def test_auto_plan_on_a_cpu_loads_fp32_and_int8_cpu_loads_quantized(tiny_pre_folder):
    auto = load_model(str(tiny_pre_folder))
    assert auto.info.plan.plan == "fp32-cpu" and auto.info.dtype == "float32"
    quantized = load_model(str(tiny_pre_folder), plan="int8-cpu")
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    assert quantized.info.dtype == "int8 (dynamic)"
    assert isinstance(quantized.model.lm_head, DynamicInt8Linear)
    assert isinstance(quantized.model.model.decoder.layers[0].fc1, DynamicInt8Linear)
    text = quantized.generate("Hello", max_new_tokens=4, do_sample=False).text
    assert text and auto.generate("Hello", max_new_tokens=4, do_sample=False).text


def test_disk_offload_loads_generates_and_cleans_up(tmp_path, monkeypatch):
    from tiny_models import save_tiny_model

    # where bf16 weights would be fast (AVX2 and FMA), auto takes bf16-cpu first: half the RAM, no disk
    monkeypatch.setattr(environment, "cpu_flags", lambda: frozenset({"sse4_2"}))
    folder = save_tiny_model(tmp_path / "mid", "pre-ln", seed=3, hidden_size=512, ffn_dim=2048,
                             num_hidden_layers=6, word_embed_proj_dim=512)
    loaded = load_model(str(folder), plan="auto", cpu_memory="1.15GiB", context=256)
    assert loaded.info.plan.plan == "disk-offload" and "disk" in loaded.model.hf_device_map.values()
    offload = loaded.info.offload_folder
    assert os.path.isdir(offload)  # transformers may read offloaded safetensors weights from the originals
    reference = load_model(str(folder), plan="fp32-cpu")
    settings = dict(max_new_tokens=8, do_sample=False)
    assert loaded.generate("Hello", **settings).token_ids == reference.generate("Hello", **settings).token_ids
    loaded.unload()
    assert not os.path.exists(offload)


@pytest.mark.slow
@pytest.mark.parametrize("plan_name, tolerance", [("fp32-cpu", 0.10), ("disk-offload", 0.30), ("int8-cpu", 0.50),
                                                 ("int8-weights-cpu", 0.10), ("bf16-cpu", 0.10)])
def test_predicted_peak_memory_against_measurement(tmp_path, monkeypatch, plan_name, tolerance):
    """In a fresh process (a long test run's freed heap would hide new allocations from resident memory).
    Resident memory also counts the pages of memory-mapped weight files read once (torch's int8 quantization
    reads the fp32 file; disk offload reads its layers from it): reclaimable cache the plans need not reserve,
    hence the wider tolerances there. int8-weights-cpu reads its file a block at a time and keeps none of it
    mapped, so 10% is its bar, as on a GPU, where allocated memory has no such pages."""
    import subprocess
    import sys

    from tiny_models import save_tiny_model

    folder = save_tiny_model(tmp_path / "mid", "pre-ln", seed=3, hidden_size=512, ffn_dim=2048,
                             num_hidden_layers=6, word_embed_proj_dim=512)
    if plan_name == "bf16-cpu":  # from a bf16 folder (an fp32 one's pages, read once to convert, would count)
        OPTForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(folder)
    out = tmp_path / "check.json"
    budget = ["--cpu-memory", "1.15GiB"] if plan_name == "disk-offload" else []
    done = subprocess.run([sys.executable, "-m", "helpers", "plan", "--model", str(folder), "--check", "--plan",
                           plan_name, "--new-tokens", "64", "--out", str(out), *budget], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["plan"] == result["method"] == plan_name  # "method": the field's first name, still written
    assert result["new_tokens"] == 64 and "predicted" in done.stdout
    assert abs(result["relative_error"]) <= tolerance, result


def test_plan_command(capsys):
    assert main(["plan", "--model", "opt-13b", "--gpu-memory", "15GiB", "--cpu-memory", "12GiB"]) == 0
    out = capsys.readouterr().out
    assert "Best: int8" in out and "load_model('opt-13b', plan='int8')" in out
    assert main(["plan", "--model", "opt-13b", "--gpu-memory", "15GiB", "--cpu-memory", "12GiB", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["options"][0]["plan"] == data["options"][0]["method"] == "int8"  # "method": its first name
    assert all({"plan", "method", "gpu_bytes", "cpu_bytes", "fits"} <= set(o) for o in data["options"])
    assert main(["plan", "--model", "opt-66b", "--gpu-memory", "2GiB", "--cpu-memory", "4GiB"]) == 1
    assert "Nothing fits opt-66b" in capsys.readouterr().err
    assert main(["plan", "--model", "opt-13b", "--gpu-memory", "lots"]) == 2
    assert main(["plan", "--model", "opt-13b", "--context", "5000"]) == 2


def test_plan_check_takes_plan_and_still_its_old_name_method(monkeypatch, capsys):
    """A memory plan is a `plan` (a method is a decoding backend): `plan --check --plan NAME`; the old `--method`
    still works, with a note on stderr, and an Option's `.method` still answers, with a DeprecationWarning."""
    import tools.plan_check

    asked = []

    def fake_check(model, plan_name="auto", **kwargs):
        asked.append(plan_name)
        return {"model": model, "plan": plan_name, "method": plan_name, "predicted_bytes": 1, "measured_bytes": 1,
                "measured_on": "here", "relative_error": 0.0, "new_tokens": 1, "tokens_per_second": 1.0}

    monkeypatch.setattr(tools.plan_check, "check_plan", fake_check)
    assert main(["plan", "--model", "opt-125m", "--check", "--plan", "int8-cpu"]) == 0
    assert "with plan int8-cpu" in capsys.readouterr().out
    assert main(["plan", "--model", "opt-125m", "--check", "--method", "fp32-cpu"]) == 0
    assert "--method is deprecated; it is called --plan now" in capsys.readouterr().err
    assert asked == ["int8-cpu", "fp32-cpu"]
    assert main(["plan", "--model", "opt-125m", "--check", "--method", "fp32-cpu", "--plan", "int8-cpu"]) == 2
    assert "--method" not in subprocess_help("plan") and "--plan NAME" in subprocess_help("plan")  # undocumented
    option = plan("opt-125m", T4)[0]
    with pytest.warns(DeprecationWarning, match="Option.plan"):
        assert option.method == option.plan


def subprocess_help(command: str) -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "helpers", command, "--help"], capture_output=True, text=True,
                          check=True).stdout


def test_plan_command_on_a_folder(tiny_pre_folder, capsys):
    assert main(["plan", "--model", str(tiny_pre_folder), "--cpu-memory", "8GiB"]) == 0
    assert "fp32-cpu" in capsys.readouterr().out


def test_generate_command_takes_a_plan(tiny_pre_folder, capsys):
    assert main(["generate", "--model", str(tiny_pre_folder), "--plan", "int8-cpu", "--greedy",
                 "--max-new-tokens", "3", "--json", "Hello"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dtype"] == "int8 (dynamic)" and len(out["token_ids"]) == 3
    assert main(["generate", "--model", str(tiny_pre_folder), "--plan", "nf4", "Hello"]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err or torch.cuda.is_available()
    assert main(["generate", "--model", str(tiny_pre_folder), "--plan", "fp32-cpu", "--device", "cpu", "Hi"]) == 1
    assert "either a memory plan" in capsys.readouterr().err


@pytest.mark.parametrize("gpus", [0, 1])
def test_disk_offload_never_puts_the_whole_model_on_disk(gpus):
    """accelerate 1.14 (Colab's) refuses a device map that is all "disk": the token table stays in memory, even
    where the budget is too small for it (the option then says it does not fit rather than failing to load)."""
    budget = Budget(gpu_bytes=64 * 2**20 if gpus else 0, gpus=gpus, cpu_bytes=64 * 2**20)
    option = next(o for o in plan("opt-125m", budget) if o.plan == "disk-offload")
    assert option.placement["model.decoder.embed_tokens"] != "disk"
    assert set(option.placement.values()) - {"disk"}
    assert "disk" in option.placement.values()
