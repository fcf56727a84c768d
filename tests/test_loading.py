"""load_model from folders, clear errors for everything a user can get wrong, and unload that frees memory."""

import json
import os
import time

import pytest
import torch
from tiny_models import save_tiny_model

from helpers import generate
from helpers.environment import resident_memory_bytes
from helpers.errors import ModelLoadError, ModelUnloadedError, UnknownModelError
from helpers.loading.model import load_model, unload
from helpers.loading.sources import resolve_source


def test_load_a_local_folder_returns_model_tokenizer_and_facts(tiny_folder):
    model, tokenizer, info = load_model(str(tiny_folder), device="cpu")
    assert info.dtype == "float32" and info.device == "cpu"  # 'auto' is fp32 on the CPU
    assert info.parameters == sum(p.numel() for p in model.parameters())
    assert info.weight_bytes == 4 * info.parameters + 0  # no buffers besides parameters in OPT
    assert info.source == str(tiny_folder.resolve()) and info.load_seconds > 0
    assert tokenizer("Hello").input_ids == [2, 31414]
    assert not model.training


@pytest.mark.parametrize("dtype, expected", [("float16", torch.float16), ("bfloat16", torch.bfloat16), ("fp32", torch.float32)])
def test_dtype_choice(tiny_pre_folder, monkeypatch, dtype, expected):
    monkeypatch.setattr("helpers.environment.cpu_flags", lambda: frozenset({"avx512_bf16"}))  # no warning here
    loaded = load_model(str(tiny_pre_folder), device="cpu", dtype=dtype)
    assert loaded.model.dtype == expected and loaded.info.dtype == str(expected).removeprefix("torch.")


def test_short_names_and_hub_ids_resolve_to_the_hub():
    assert resolve_source("opt-350m") == ("facebook/opt-350m", False)
    assert resolve_source("facebook/opt-1.3b") == ("facebook/opt-1.3b", False)
    assert resolve_source("someone/my-opt-finetune") == ("someone/my-opt-finetune", False)


@pytest.mark.parametrize("name", ["gpt-2", "opt 350m", "opt-175b"])
def test_unknown_name_says_what_to_pass(name):
    with pytest.raises(UnknownModelError, match="short name .*opt-125m.*local folder"):
        load_model(name)


@pytest.mark.parametrize("path", ["./no-such-folder", "/tmp/no/such/opt", "~/missing-opt", "weights.pt"])
def test_missing_folder_is_reported_as_such(path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(path)


def test_folder_without_config_points_to_convert_for_metaseq_files(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "restored.pt").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="convert-metaseq"):
        load_model(str(tmp_path))


def test_lfs_pointer_instead_of_weights_says_git_lfs_pull(tmp_path):
    folder = save_tiny_model(tmp_path / "m")
    (folder / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(ModelLoadError, match="git lfs pull"):
        load_model(str(folder))


def test_a_folder_with_config_but_no_weights(tmp_path):
    folder = save_tiny_model(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(str(folder))


def test_a_truncated_weight_file_is_a_clear_error(tmp_path):
    folder = save_tiny_model(tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="incomplete or damaged"):
        load_model(str(folder))


def test_a_model_that_is_not_opt_is_refused(tmp_path):
    folder = save_tiny_model(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gpt2"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="not OPT"):
        load_model(str(folder))


def test_offline_hub_says_how_to_use_a_local_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"(?s)HF_HUB_OFFLINE.*pass the folder"):
        load_model("opt-125m")


def test_unreachable_hub_fails_fast_with_the_same_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"(?s)cannot be reached.*pass the folder"):
        load_model("facebook/opt-125m")
    assert time.perf_counter() - start < 30  # no minute of client retries (a bound on behaviour, not a benchmark)


def test_cuda_asked_for_without_a_gpu(tiny_pre_folder):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_model(str(tiny_pre_folder), device="cuda")


def test_unload_frees_even_when_the_caller_still_holds_the_model(tiny_pre_folder, tokenizer):
    loaded = load_model(str(tiny_pre_folder))
    model = loaded.model  # a notebook variable that outlives the unload
    loaded.unload()
    assert loaded.model is None
    assert all(p.device.type == "meta" for p in model.parameters())
    with pytest.raises(ModelUnloadedError, match="load_model"):
        generate(model, tokenizer, "Hello", max_new_tokens=2)
    with pytest.raises(ModelUnloadedError):
        loaded.generate("Hello")
    unload(model)  # unloading twice is harmless


def test_five_load_unload_cycles_return_the_memory(tmp_path):
    """Bound: after the first cycle, five more load/generate/unload cycles grow resident memory by
    less than half the model's weights (a leak would keep at least one copy per cycle)."""
    folder = save_tiny_model(tmp_path / "mid", "pre-ln", hidden_size=512, ffn_dim=2048, num_hidden_layers=6,
                             word_embed_proj_dim=512)
    weights = os.path.getsize(folder / "model.safetensors")
    assert weights > 100e6

    def cycle():
        loaded = load_model(str(folder))  # safetensors are mapped lazily: the weights become resident when used
        loaded.generate("Hello", max_new_tokens=4, do_sample=False)
        held = resident_memory_bytes()
        loaded.unload()
        return held

    held = cycle()
    baseline = resident_memory_bytes()
    assert held - baseline > 0.5 * weights  # unload really gave the weights back
    for _ in range(5):
        cycle()
    growth = resident_memory_bytes() - baseline
    assert growth < 0.5 * weights, f"resident memory grew {growth / 1e6:.0f} MB over five cycles"


def test_loading_reports_progress(tiny_pre_folder):
    seen = []
    load_model(str(tiny_pre_folder), progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert seen and seen[-1][1] == seen[-1][2] and all(done <= total for _, done, total in seen)
