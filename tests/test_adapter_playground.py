"""The playground with LoRA adapters: the picker lists each base with its adapters, side by side compares base and
tuned, and a mismatched adapter is a message with the working model kept."""

import json
import shutil

import pytest
import torch
from test_adapters import make_adapter, peft_reference
from tiny_models import save_tiny_model

from helpers.playground.app import Playground

EOS = 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter-playground")
    base = save_tiny_model(root / "pre", "pre-ln", seed=1)
    finetuned = root / "finetuned"
    adapter = make_adapter(base, finetuned / "my-adapter")
    (finetuned / "not-an-adapter").mkdir()
    return {"base": str(base), "adapter": adapter, "finetuned": str(finetuned), "root": root}


@pytest.fixture
def app(setup):
    pg = Playground(model=setup["base"], device="cpu", adapters=setup["finetuned"])
    pg.refresh_seconds = 0
    pg.wait()
    pg.preset.value = "the tutorial's greedy"
    pg.max_new_tokens.value = 8
    yield pg
    pg.wait()
    if pg.loaded is not None:
        pg.loaded.unload()


def peft_tokens(setup, prompt_ids: list[int], count: int) -> list[int]:
    """peft's own greedy continuation, the end-of-text token dropped (results here do not list it)."""
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = peft_reference(setup["base"], setup["adapter"]).generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=count)
    tokens = out[0, ids.shape[1]:].tolist()
    return tokens[:tokens.index(EOS)] if EOS in tokens else tokens


def test_the_picker_lists_the_base_with_its_adapter_and_it_generates_peft_s_tokens(app, setup):
    options = list(app.model_picker.options)
    names = [name for _, name in options]
    at = names.index(setup["base"])
    assert options[at + 1] == ("pre + my-adapter", str(setup["adapter"].resolve()))  # right after its base
    assert not any("not-an-adapter" in name for name in names)
    app.model_picker.value = str(setup["adapter"].resolve())
    app.wait()
    assert app.loaded.info.adapter.name == "my-adapter" and app.loaded.info.adapter_merged
    assert "pre + my-adapter</b>" in app.model_status.value
    app.generate()
    app.wait()
    result = app.runs[-1].result
    assert result.token_ids and result.token_ids == peft_tokens(setup, result.prompt_token_ids, 8)


def test_side_by_side_compares_the_base_with_the_tuned_model(app, setup):
    tuned = str(setup["adapter"].resolve())
    app.compare_picker.value = (setup["base"], tuned)
    app.compare_button.click()
    app.wait()
    headers = [column.children[0].value for column in app.compare_columns.children]
    assert len(headers) == 2 and "<b>pre + my-adapter</b>" in headers[1]
    entries = [h for h in app.history if h["run"].startswith("side by side")]
    assert [h["model"] for h in entries] == [setup["base"], tuned]
    tokenizer = app.loaded.tokenizer
    expected = tokenizer.decode(peft_tokens(setup, tokenizer(app.prompt.value).input_ids, 8))
    assert entries[1]["output"] == expected != entries[0]["output"]
    assert app.loaded_name == setup["base"] and app.loaded.info.adapter is None  # the playground's own model stays


def test_a_typed_adapter_that_does_not_fit_its_base_is_a_message_and_the_working_model_stays(app, setup):
    narrow = save_tiny_model(setup["root"] / "narrow", hidden_size=32, ffn_dim=64, word_embed_proj_dim=32)
    wrong = setup["root"] / "wrong-base"
    shutil.copytree(setup["adapter"], wrong, dirs_exist_ok=True)
    config = json.loads((wrong / "adapter_config.json").read_text())
    (wrong / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(narrow)}))
    working = app.loaded.model
    app.models.path.value = str(wrong)
    app.wait()
    assert ("narrow + wrong-base", str(wrong)) in list(app.model_picker.options)
    assert "does not fit this model: it was made for a model with hidden size 64 and 2 layers" in app.message.value
    assert app.loaded_name == app.model_picker.value == setup["base"] and app.loaded.model is working
    assert "narrow + wrong-base</b> failed" in app.model_status.value and "still loaded" in app.model_status.value
    app.generate()
    app.wait()
    assert app.runs[-1].result.token_ids
