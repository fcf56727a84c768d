"""Every path that touches the Hugging Face Hub, with the hub switched off and with it unreachable: a
message that says so and how to use a local folder, quickly, never a hub client's traceback."""

import time

import pytest

from helpers.cli.main import main
from helpers.errors import ModelLoadError

HUB_ID = "someone/opt-350m-finetuned"  # not in the size table: its config would have to be fetched


@pytest.fixture(params=["offline", "unreachable"])
def no_hub(request, monkeypatch):
    if request.param == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    yield request.param
    assert time.perf_counter() - start < 60  # no minute-long retries (a bound on behaviour, not a benchmark)


def says_offline(text: str, mode: str) -> bool:
    why = "HF_HUB_OFFLINE" if mode == "offline" else "cannot be reached"
    return why in text and "pass the folder" in text and "Traceback" not in text


@pytest.mark.parametrize("call", [
    lambda: __import__("helpers").load_model("opt-125m"),
    lambda: __import__("helpers").load_model("facebook/opt-1.3b", plan="fp32-cpu"),
    lambda: __import__("helpers").load_model(HUB_ID),
    lambda: __import__("helpers.loading.sources", fromlist=["size_of"]).size_of(HUB_ID),
    lambda: __import__("helpers.loading.fetch", fromlist=["download"]).download("patrickvonplaten/opt_metaseq_350m"),
    lambda: __import__("helpers.loading.fetch", fromlist=["clone"]).clone("patrickvonplaten/opt_metaseq_350m", "/tmp/x-no-hub"),
], ids=["load size", "load hub id with a plan", "load unknown hub id", "size of a hub id", "download", "git clone"])
def test_library_paths(no_hub, call):
    with pytest.raises(ModelLoadError) as info:
        call()
    assert says_offline(str(info.value), no_hub), str(info.value)


@pytest.mark.parametrize("args", [
    ["generate", "--model", "opt-350m", "Hello"],
    ["generate", "--model", HUB_ID, "--json", "Hello"],
    ["plan", "--model", HUB_ID],
    ["bench", "--model", HUB_ID, "--methods", "generate"],
    ["leaks", "--model", HUB_ID, "--cycles", "2"],
], ids=["generate", "generate hub id", "plan", "bench", "leaks"])
def test_command_line(no_hub, capsys, args):
    assert main(args) == 1
    err = capsys.readouterr().err
    assert says_offline(err, no_hub), err


def test_the_playground(no_hub, tiny_pre_folder):
    from helpers.playground.app import Playground

    app = Playground(model="opt-350m", extra_models=[str(tiny_pre_folder)], device="cpu")
    app.wait()
    assert says_offline(app.message.value.replace("&#x27;", "'"), no_hub) and app.loaded is None
    app.model_picker.value = str(tiny_pre_folder)  # a local folder still works
    app.wait()
    app.max_new_tokens.value = 3
    app.generate()
    app.wait()
    assert app.runs[-1].result.token_ids
    app.loaded.unload()


def test_comparisons_leave_an_unreachable_model_out(no_hub):
    from helpers.analysis.comparison import fitting

    keep, left_out = fitting([HUB_ID])
    assert keep == [] and says_offline(left_out[HUB_ID], no_hub)
