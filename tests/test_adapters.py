"""LoRA adapters: read, refused when made for another model, applied by load_model and --adapter, the same tokens
as peft's own PeftModel on every decoding backend; adapters made here with peft itself."""

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from tiny_models import save_tiny_model
from transformers import OPTForCausalLM

from helpers.cli.main import main
from helpers.errors import AdapterError, SettingsError
from helpers.finetune.adapters import (
    apply_adapter,
    check_adapter,
    find_adapters,
    merge_adapter,
    read_adapter,
)
from helpers.generation.backends.registry import BACKENDS
from helpers.generation.run import generate
from helpers.generation.settings import GenerationSettings
from helpers.loading.model import load_model
from helpers.opt.sizes import get_size

PROMPT = "The adapter changes what comes next:"


def make_adapter(base_folder: Path, out: Path, seed: int = 1, targets=("q_proj", "v_proj"), **config) -> Path:
    """peft's own adapter on the model in `base_folder`, its lora_B drawn at random so that it changes the logits
    (peft starts lora_B at zero), saved with save_pretrained."""
    model = OPTForCausalLM.from_pretrained(base_folder)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets),
                                                  task_type="CAUSAL_LM", **config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(out)
    return out


def peft_reference(base_folder: Path, adapter: Path) -> PeftModel:
    """The adapter as peft loads it, on a fresh copy of the base: what every path here must agree with."""
    return PeftModel.from_pretrained(OPTForCausalLM.from_pretrained(base_folder), str(adapter)).eval()


@pytest.fixture(scope="module")
def adapter(tiny_pre_folder, tmp_path_factory) -> Path:
    return make_adapter(tiny_pre_folder, tmp_path_factory.mktemp("adapters") / "my-adapter")


def real_size_adapter(out: Path, size: str, base: str | None) -> Path:
    """A rank-1 adapter in the shape peft writes for an OPT size (its weights tiny: only the shapes matter)."""
    shape = get_size(size)
    tensors = {}
    for layer in range(shape.layers):
        for module in ("q_proj", "v_proj"):
            key = f"base_model.model.model.decoder.layers.{layer}.self_attn.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.zeros(1, shape.d_model)
            tensors[f"{key}.lora_B.weight"] = torch.zeros(shape.d_model, 1)
    out.mkdir(parents=True)
    save_file(tensors, out / "adapter_model.safetensors")
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 1, "lora_alpha": 2, "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": base}))
    return out


def test_read_adapter_gives_the_shape_it_was_made_for(adapter, tiny_pre_folder):
    info = read_adapter(adapter)
    assert (info.hidden_size, info.num_layers, info.rank) == (64, 2, 4)
    assert info.target_modules == ("q_proj", "v_proj") and info.name == "my-adapter"
    assert Path(info.base_model).resolve() == Path(tiny_pre_folder).resolve()  # peft recorded the base folder


def test_load_model_with_an_adapter_gives_peft_s_logits(adapter, tiny_pre_folder):
    ids = torch.tensor([[2, 133, 4286, 1639, 99, 7]])
    reference = peft_reference(tiny_pre_folder, adapter)
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        base = OPTForCausalLM.from_pretrained(tiny_pre_folder)(input_ids=ids).logits
    assert (expected - base).abs().max() > 1e-2  # the adapter does change the model
    loaded = load_model(str(tiny_pre_folder), adapter=adapter, device="cpu", dtype="float32")
    assert loaded.peft_model is not None and loaded.info.label.endswith(" + my-adapter")
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, expected)  # the same layers: bit for bit
    merged = load_model(str(tiny_pre_folder), adapter=adapter, merge=True, device="cpu", dtype="float32")
    assert merged.peft_model is None and merged.info.adapter_merged and "LoRA adapter (rank 4) merged in" in merged.info.summary()
    with torch.no_grad():
        torch.testing.assert_close(merged.model(input_ids=ids).logits, expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(merge_adapter(loaded.peft_model)(input_ids=ids).logits, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("merge", [False, True])
def test_every_backend_generates_peft_s_greedy_tokens(adapter, tiny_pre_folder, merge):
    reference = peft_reference(tiny_pre_folder, adapter)
    loaded = load_model(str(tiny_pre_folder), adapter=adapter, merge=merge, device="cpu", dtype="float32")
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=12, min_new_tokens=12)[0, ids.shape[1]:].tolist()
    settings = GenerationSettings.greedy(max_new_tokens=12, min_new_tokens=12)
    ran = []
    for name, backend in BACKENDS.items():
        if "greedy" not in backend.modes or backend.cannot_run(loaded.model, 1) is not None:
            continue
        ran.append(name)
        assert generate(loaded.model, loaded.tokenizer, PROMPT, settings, method=name).token_ids == expected, name
    assert generate(loaded.model, loaded.tokenizer, PROMPT, settings).token_ids == expected  # auto's pick
    # unmerged, the CPU engine (which reads the plain weights) must stand aside; merged, it runs the adapter
    assert ("cpu-fast" in ran) is merge and {"cached", "hf", "tutorial"} <= set(ran)
    if not merge:
        with pytest.raises(SettingsError, match="LoRA adapter applied beside them: load it with merge=True"):
            generate(loaded.model, loaded.tokenizer, PROMPT, settings, method="cpu-fast")


def test_an_adapter_on_embeddings_keeps_the_cpu_engine_away(tiny_pre_folder, tmp_path):
    folder = make_adapter(tiny_pre_folder, tmp_path / "embed", targets=("embed_tokens",))
    loaded = load_model(str(tiny_pre_folder), adapter=folder, device="cpu", dtype="float32")
    assert BACKENDS["cpu-fast"].cannot_run(loaded.model, 1) is not None
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = peft_reference(tiny_pre_folder, folder).generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
            min_new_tokens=8)[0, ids.shape[1]:].tolist()
    assert loaded.generate(PROMPT, GenerationSettings.greedy(max_new_tokens=8, min_new_tokens=8)).token_ids == expected


def test_an_adapter_for_another_size_is_refused_saying_what_it_was_made_for(tmp_path, adapter, tiny_pre_folder):
    big = real_size_adapter(tmp_path / "for-1.3b", "opt-1.3b", "facebook/opt-1.3b")
    with pytest.raises(AdapterError) as refused:
        load_model(str(tiny_pre_folder), adapter=big, device="cpu", dtype="float32")
    message = str(refused.value)
    assert "made for a model with hidden size 2048 and 24 layers (opt-1.3b, base 'facebook/opt-1.3b')" in message
    assert "the loaded model is a custom OPT (64, 2 layers)" in message and "Load opt-1.3b with it" in message
    # a known size is refused before anything is fetched (the hub is off in the tests)
    with pytest.raises(AdapterError, match="the loaded model is opt-125m \\(768, 12 layers\\)"):
        load_model("opt-125m", adapter=big)
    narrow = save_tiny_model(tmp_path / "narrow", hidden_size=32, ffn_dim=64, word_embed_proj_dim=32)
    with pytest.raises(AdapterError, match="hidden size 64 and 2 layers"):
        load_model(str(narrow), adapter=adapter, device="cpu", dtype="float32")
    with pytest.raises(AdapterError, match="hidden size 64"):
        check_adapter(read_adapter(adapter), get_size("opt-350m"))
    model = OPTForCausalLM.from_pretrained(tiny_pre_folder)
    assert isinstance(apply_adapter(model, adapter), PeftModel)
    with pytest.raises(AdapterError, match="already has an adapter"):
        apply_adapter(model, adapter)


def test_a_served_model_takes_no_adapter_here(adapter):
    with pytest.raises(AdapterError, match="--enable-lora --lora-modules"):
        load_model("http://127.0.0.1:9/v1", adapter=adapter)


def test_an_adapter_for_another_architecture_is_refused(tmp_path, tiny_pre_folder):
    folder = tmp_path / "llama-adapter"
    folder.mkdir()
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 64),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 4)},
              folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4,
                                                            "base_model_name_or_path": "meta-llama/Llama-3.2-1B"}))
    with pytest.raises(AdapterError, match="not OPT .*'model.layers.0.self_attn.q_proj'.*meta-llama/Llama-3.2-1B"):
        load_model(str(tiny_pre_folder), adapter=folder, device="cpu", dtype="float32")


@pytest.mark.parametrize("case, expected", [
    ("missing", "There is no adapter folder"),
    ("empty", "has no adapter_config.json"),
    ("model folder", "It is a model folder"),
    ("prefix tuning", "PREFIX_TUNING adapter, not a LoRA adapter"),
    ("no weights", "was not saved completely"),
    ("damaged weights", "damaged or incomplete"),
    ("bad json", "cannot be read as JSON"),
])
def test_a_folder_that_is_not_a_lora_adapter_is_refused_clearly(tmp_path, adapter, tiny_pre_folder, case, expected):
    folder = tmp_path / "x"
    if case == "model folder":
        folder = tiny_pre_folder
    elif case != "missing":
        folder.mkdir()
    if case in ("prefix tuning", "no weights", "damaged weights", "bad json"):
        config = json.loads((adapter / "adapter_config.json").read_text())
        if case == "prefix tuning":
            config["peft_type"] = "PREFIX_TUNING"
        (folder / "adapter_config.json").write_text("{not json" if case == "bad json" else json.dumps(config))
    if case == "damaged weights":
        (folder / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes()[:100])
    with pytest.raises(AdapterError, match=expected):
        load_model(str(tiny_pre_folder), adapter=folder, device="cpu", dtype="float32")
    if case != "model folder":
        with pytest.raises(AdapterError, match=expected):
            main_code_and_message(["generate", "--model", str(tiny_pre_folder), "--adapter", str(folder), "x"])


def main_code_and_message(argv):
    """Run the CLI in-process; raise its message as an AdapterError when it fails, as a test can match it."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    if code != 0:
        assert "Traceback" not in err.getvalue()
        raise AdapterError(err.getvalue())
    return code


def test_an_adapter_folder_loads_its_base_and_a_missing_base_says_what_to_load(tmp_path, adapter, tiny_pre_folder):
    loaded = load_model(str(adapter))  # peft recorded the base folder, which is here
    assert loaded.info.adapter.path == adapter.resolve() and loaded.info.adapter_merged is False
    assert Path(loaded.info.source) == Path(tiny_pre_folder).resolve()
    for base, why in [("/content/drive/MyDrive/opt-gone", "is not a folder on this machine"),
                      ("someone/opt-custom", "cannot be downloaded"), (None, "it names no base model")]:
        folder = tmp_path / f"base-{why[:6].replace(' ', '-')}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
        config = json.loads((adapter / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))
        with pytest.raises(AdapterError) as refused:
            load_model(str(folder))
        message = str(refused.value)
        assert why in message and "hidden size 64 and 2 layers" in message
        assert f"load_model('BASE_FOLDER_OR_HUB_ID', adapter='{folder.resolve()}')" in message
        assert f"--model BASE_FOLDER_OR_HUB_ID --adapter {folder.resolve()}" in message
    real = real_size_adapter(tmp_path / "no-base-125m", "opt-125m", None)
    with pytest.raises(Exception, match="opt-125m"):  # no base named: the shape's size is fetched (the hub is off)
        load_model(str(real))


def test_cli_adapter_generates_peft_s_greedy_tokens(adapter, tiny_pre_folder, capsys):
    reference = peft_reference(tiny_pre_folder, adapter)
    code = main(["generate", "--model", str(tiny_pre_folder), "--adapter", str(adapter), "--greedy",
                 "--max-new-tokens", "10", "--min-new-tokens", "10", "--json", PROMPT])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    ids = torch.tensor([data["prompt_token_ids"]])
    with torch.no_grad():
        expected = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=10, min_new_tokens=10)[0, ids.shape[1]:].tolist()
    assert data["token_ids"] == expected and data["adapter"] == str(adapter.resolve())
    assert "+ my-adapter from" in err and "LoRA adapter (rank 4) merged in" in err  # merged (unquantized weights): the CPU engine's speed
    code = main(["generate", "--model", str(adapter), "--greedy", "--max-new-tokens", "10", "--min-new-tokens", "10",
                 "--json", PROMPT])  # the adapter folder as the model: its base, with it
    assert code == 0 and json.loads(capsys.readouterr().out)["token_ids"] == expected


def test_find_adapters_lists_the_adapters_under_a_folder(tmp_path, adapter):
    root = tmp_path / "finetuned"
    for place in ("a", "b/run-2", "a/checkpoints/checkpoint-10"):
        (root / place).mkdir(parents=True)
        for file in adapter.iterdir():
            (root / place / file.name).write_bytes(file.read_bytes())
    (root / "notes").mkdir()
    (root / "notes" / "adapter_config.json").write_text("{}")  # not an adapter: skipped
    assert [info.path for info in find_adapters(root)] == [(root / "a").resolve(), (root / "b/run-2").resolve()]
    assert find_adapters(tmp_path / "none") == []
