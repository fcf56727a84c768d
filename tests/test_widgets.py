"""The playground driven programmatically: generate, stream, stop, switch models, branch, compare, export."""

import csv
import html
import io
import json
import re
import threading
import time

import pytest
import torch
from tiny_models import save_tiny_model

import helpers.playground.app as widgets
from helpers.environment import resident_memory_bytes
from helpers.generation.settings import PRESETS
from helpers.playground.app import Playground
from helpers.playground.state import model_choices
from helpers.playground.views import probability_color


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("playground")
    return {
        "pre": str(save_tiny_model(base / "pre", "pre-ln", seed=1)),
        "post": str(save_tiny_model(base / "post", "post-ln", seed=2)),
        # slow enough on a CPU to stop mid-stream, big enough to see its memory come back
        "mid": str(save_tiny_model(base / "mid", "pre-ln", seed=3, hidden_size=512, ffn_dim=2048,
                                   num_hidden_layers=6, word_embed_proj_dim=512)),
    }


@pytest.fixture
def app(folders):
    pg = Playground(model=folders["pre"], extra_models=[folders["post"], folders["mid"]], device="cpu")
    pg.refresh_seconds = 0  # every piece reaches the output at once (the app batches them for browsers)
    pg.wait()
    yield pg
    pg.stop()
    pg.wait()
    if pg.loaded is not None:
        pg.loaded.unload()


def printed(pg) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", pg.output.value))


def in_background(pg, call, *args):
    """Start a job the way a second front-end message would meet it: from another thread (in a kernel
    the job handles the Stop click itself between steps)."""
    worker = threading.Thread(target=call, args=args)
    worker.start()
    deadline = time.time() + 60
    while not pg.busy and worker.is_alive() and time.time() < deadline:
        time.sleep(0.005)
    return worker


def streaming(pg):
    """Start a generation in the background and wait for its first tokens."""
    worker = in_background(pg, pg.generate)
    deadline = time.time() + 60
    while (pg._stream is None or len(pg._stream.token_ids) < 1) and time.time() < deadline:
        time.sleep(0.005)
    return worker


def test_generate_streams_text_and_reports_the_run(app):
    app.prompt.value = "Natural language processing is a subfield of"
    app.preset.value = "the tutorial's greedy"
    app.max_new_tokens.value = 16
    assert app.generate_button.disabled is False
    shown = []
    app.output.observe(lambda change: shown.append(change["new"]), names="value")
    app.generate_button.click()
    app.wait()
    run = app.runs[-1]
    assert printed(app) == run.prompt + run.text and run.text == run.result.text
    assert len(set(shown)) > 4  # drawn piece by piece, not at the end
    assert "tokens/s" in app.status.value and "first token" in app.status.value and "RAM" in app.status.value
    assert app.history[-1]["output"] == run.text and app.history[-1]["settings"]["do_sample"] is False
    assert not app.last_error and not app.generate_button.disabled and app.stop_button.disabled


def test_stop_ends_the_generation_mid_stream(app, folders):
    app.model_picker.value = folders["mid"]
    app.wait()
    app.preset.value = "the tutorial's greedy"
    app.max_new_tokens.value = 512
    worker = in_background(app, app.generate)
    deadline = time.time() + 60
    while (app._stream is None or len(app._stream.token_ids) < 3) and time.time() < deadline:
        time.sleep(0.01)
    app.stop_button.click()
    app.wait()
    worker.join()
    result = app.runs[-1].result
    assert result.finish_reason == "stopped" and 3 <= len(result.token_ids) < 512
    assert "finished: stopped" in app.status.value


def test_a_second_click_does_not_start_a_second_generation(app, folders):
    app.model_picker.value = folders["mid"]
    app.wait()
    app.max_new_tokens.value = 200
    worker = in_background(app, app.generate)
    assert app.generate_button.disabled
    assert app.generate() is False  # what a second click does while the first runs
    assert "Already generating" in app.message.value
    app.stop()
    app.wait()
    worker.join()
    assert len(app.runs) == 1 and len(app.history) == 1


def test_switching_models_unloads_the_previous_one_and_returns_its_memory(app, folders):
    app.model_picker.value = folders["mid"]
    app.wait()
    app.max_new_tokens.value = 4
    app.generate()
    app.wait()
    mid = app.loaded.model
    held = resident_memory_bytes()
    app.model_picker.value = folders["pre"]
    app.wait()
    assert app.loaded_name == folders["pre"] and all(p.device.type == "meta" for p in mid.parameters())
    weights = sum(p.numel() for p in app.loaded.model.parameters())  # the tiny one
    assert held - resident_memory_bytes() > 50e6 and weights < 5e6
    assert folders["pre"] in app.model_status.value and "loaded in" in app.model_status.value


def test_probabilities_view_shades_tokens_and_lists_alternatives(app):
    app.preset.value = "the tutorial's greedy"
    app.max_new_tokens.value = 10
    app.generate()
    app.wait()
    run = app.current
    assert len(app.tokens_box.children) == 1  # drawn only once the tab is open
    app.tabs.selected_index = 1
    buttons = app.tokens_box.children[1:]
    assert len(buttons) == len(run.tokens) == len(run.result.token_ids)
    for button, token in zip(buttons, run.tokens):
        assert button.style.button_color == probability_color(torch.tensor(token.logprob).exp().item())
        assert button.tooltip.count("\n") == 5 and "%" in button.tooltip  # the token, then its 5 alternatives
        assert token.top[0][0] == token.id  # greedy picked the most likely
        assert button.description.startswith("\u2423") == token.text.startswith(" ")  # a word's start shows
    assert any(t.text.startswith(" ") for t in run.tokens)
    assert "opt-legend" in app.probabilities_page.children[0].value  # the colours explained
    buttons[2].click()
    assert app.selected_token == 2
    alternatives = [b for b in app.alternatives.children[1].children if "opt-alternative" in b._dom_classes]
    assert len(alternatives) == 5
    box = app.tokens_box.children
    assert box.index(app.alternatives) == box.index(buttons[2]) + 1  # on the line under the token clicked


def test_choosing_an_alternative_branches_and_branches_compare(app):
    app.preset.value = "the tutorial's greedy"
    app.max_new_tokens.value = 12
    app.generate()
    app.wait()
    parent = app.current
    app.select_token(4)
    alternative = parent.tokens[4].top[2]
    app.alternatives.children[1].children[2].click()
    app.wait()
    branch = app.current
    assert branch.parent == parent.label and branch.branched_at == 4
    assert [t.id for t in branch.tokens[:4]] == [t.id for t in parent.tokens[:4]]
    assert branch.tokens[4].id == alternative[0] and len(branch.tokens) == 12
    assert branch.text.startswith(app.loaded.tokenizer.decode([t.id for t in parent.tokens[:4]]))
    assert "branch 1" in app.branches_view.value and parent.label in app.branches_view.value
    shown = app.branches_view.value
    assert shown.count("<mark>") == 1  # the original: nothing marked; the branch: from where it differs
    marked = html.unescape(shown.split("<mark>")[1].split("</mark>")[0])
    assert branch.text.endswith(marked) and len(marked) < len(branch.text)
    app.select_token(7)  # a branch of the branch
    app.branch(7, branch.tokens[7].top[1][0])
    app.wait()
    assert app.current.parent == "branch 1" and "branch 2" in app.branches_view.value


def test_side_by_side_runs_each_model_with_the_same_seed(app, folders):
    app.preset.value = "balanced sampling"
    app.max_new_tokens.value = 8
    app.compare_picker.value = (folders["pre"], folders["post"])
    app.compare_button.click()
    app.wait()
    columns = app.compare_columns.children
    assert len(columns) == 2 and all("tokens/s" in c.children[0].value for c in columns)
    entries = [h for h in app.history if h["run"].startswith("side by side")]
    assert [h["model"] for h in entries] == [folders["pre"], folders["post"]]
    assert entries[0]["settings"]["seed"] == entries[1]["settings"]["seed"] is not None
    assert app.loaded is not None and app.loaded.model is not None


def test_history_exports_json_and_csv(app):
    app.max_new_tokens.value = 5
    for _ in range(2):
        app.generate()
        app.wait()
    data = json.loads(app.export_history("json"))
    assert len(data) == 2 and {"prompt", "output", "settings", "tokens_per_second", "model"} <= set(data[0])
    assert "opt-history.json" in app.export_link.value and "base64," in app.export_link.value
    rows = list(csv.DictReader(io.StringIO(app.export_history("csv"))))
    assert [r["output"] for r in rows] == [d["output"] for d in data]
    assert json.loads(rows[0]["settings"])["max_new_tokens"] == 5


def test_presets_set_the_controls_and_edits_make_it_custom(app):
    app.preset.value = "the tutorial's greedy"
    assert app.do_sample.value is False and app.max_new_tokens.value == 30
    assert app.settings() == PRESETS["the tutorial's greedy"]
    app.preset.value = "contrastive"
    assert app.settings().mode == "contrastive"
    app.temperature.value = 1.3
    assert app.preset.value == "custom"


@pytest.mark.parametrize("setup, expected", [
    (lambda pg: setattr(pg.prompt, "value", "   "), "prompt is empty"),
    (lambda pg: setattr(pg.prompt, "value", "hello " * 2100), "2048 positions"),
    (lambda pg: (setattr(pg.penalty_alpha, "value", 0.5), setattr(pg.top_k, "value", 0)), "Contrastive search"),
])
def test_bad_input_gets_a_message_and_the_app_stays_usable(app, setup, expected):
    setup(app)
    app.generate()
    app.wait()
    assert expected in app.message.value and not app.generate_button.disabled
    app.prompt.value, app.penalty_alpha.value, app.max_new_tokens.value = "Hello", 0.0, 3
    app.generate()
    app.wait()
    assert app.runs and app.runs[-1].result.finish_reason in ("length", "eos") and not app.last_error


@pytest.mark.parametrize("error, expected", [
    (RuntimeError("boom inside a library"), "Something failed: RuntimeError: boom inside a library"),
    (torch.cuda.OutOfMemoryError("CUDA out of memory"), "ran out of memory"),
])
def test_an_exception_inside_generation_is_shown_and_nothing_is_left_running(app, monkeypatch, error, expected):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(widgets, "stream", broken)
    threads = threading.active_count()
    app.generate()
    app.wait()
    assert expected in app.message.value and not app.busy and threading.active_count() <= threads
    monkeypatch.undo()
    app.max_new_tokens.value = 3
    app.generate()
    app.wait()
    assert app.runs[-1].result.token_ids


@pytest.mark.parametrize("room", ["both fit", "one at a time"])
def test_a_switch_to_a_model_that_cannot_load_leaves_the_working_one(app, monkeypatch, room):
    """Offline, opt-125m is not in the cache: the switch fails, and the model that worked still does."""
    if room == "one at a time":
        monkeypatch.setattr(app.models, "budget_bytes", lambda: 0)  # the old model must make room first
    working, model = app.loaded_name, app.loaded.model
    app.model_picker.value = "opt-125m"
    app.wait()
    assert "HF_HUB_OFFLINE" in app.message.value
    assert app.loaded_name == working and app.model_picker.value == working and app.loaded.model is not None
    status = app.model_status.value
    assert "opt-125m</b> failed" in status and ("still loaded" if room == "both fit" else "loaded back") in status
    assert (app.loaded.model is model) == (room == "both fit")
    app.max_new_tokens.value = 3
    app.generate()
    assert app.runs[-1].result.token_ids and not app.last_error


def test_tabs_and_settings_have_names_on_ipywidgets_7_and_8(app):
    assert [app.tabs.get_title(i) for i in range(5)] == ["Output", "Probabilities", "Branches", "Side by side",
                                                         "History"]
    side = next(c for c in app.widget.children[-1].children if "opt-side" in c._dom_classes)
    assert side.children[0].get_title(0) == "Decoding settings"


def test_ctrl_c_outside_a_kernel_ends_the_call_and_leaves_the_app_usable(app, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(widgets, "stream", interrupted)
    with pytest.raises(KeyboardInterrupt):
        app.generate()
    assert not app.busy and not app.generate_button.disabled and "Interrupted" in app.message.value
    monkeypatch.undo()
    app.max_new_tokens.value = 3
    app.generate()
    assert app.runs[-1].result.token_ids


def test_a_model_that_cannot_load_is_a_message(folders, tmp_path):
    pg = Playground(model=str(tmp_path / "nowhere"), extra_models=[folders["pre"]], device="cpu")
    pg.wait()
    assert "does not exist" in pg.message.value and pg.loaded is None
    pg.model_picker.value = folders["pre"]
    pg.wait()
    pg.max_new_tokens.value = 3
    pg.generate()
    pg.wait()
    assert pg.runs[-1].result.token_ids
    pg.loaded.unload()


def test_model_picker_marks_sizes_that_do_not_fit():
    from dataclasses import replace

    from helpers import environment

    small = replace(environment.detect(), gpus=(), ram_available_bytes=5 * 1024**3, cpu_bf16=False)
    choices = {c.name: c for c in model_choices(["./my-folder"], small)}
    assert choices["opt-125m"].fits and choices["opt-125m"].label == "opt-125m"  # fp32 on the CPU: no mark
    assert "int8-cpu" in choices["opt-1.3b"].label  # fits in 5 GiB only as torch's int8
    assert "only from disk" in choices["opt-13b"].label and not choices["opt-13b"].fits
    assert choices["./my-folder"].fits is None
    t4 = replace(environment.detect(), gpus=(environment.GPU(0, "Tesla T4", 15 * 1024**3, 15 * 1024**3, (7, 5)),),
                 ram_available_bytes=12 * 1024**3)
    on_t4 = {c.name: c.label for c in model_choices([], t4)}
    assert on_t4["opt-6.7b"] == "opt-6.7b" and on_t4["opt-13b"].startswith("opt-13b \u00b7 int8")


def test_the_picker_and_the_planner_agree_on_what_fits():
    from dataclasses import replace

    from helpers import environment
    from helpers.memory.planner import Budget, plan

    for ram in (2, 5, 24):
        env = replace(environment.detect(), gpus=(), ram_available_bytes=ram * 1024**3)
        for choice in model_choices([], env):
            best = next((o for o in plan(choice.name, Budget.of_machine(env)) if o.usable), None)
            assert choice.fits == (best is not None and best.method != "disk-offload"), (ram, choice.name)
            if choice.fits:
                assert choice.needs_bytes == best.needs_bytes <= env.ram_available_bytes


def test_changing_the_picker_during_a_generation_leaves_it_on_the_loaded_model(app, folders):
    """Issue 26.17: the picker said the new model while the old one stayed loaded; the next Generate loaded it."""
    app.model_picker.value = folders["mid"]
    app.wait()
    app.preset.value = "the tutorial's greedy"
    app.max_new_tokens.value = 400
    worker = streaming(app)
    app.model_picker.value = folders["post"]  # what a change of the picker does while the run goes on
    assert app.model_picker.value == folders["mid"] and "press Stop" in app.message.value
    app.stop()
    worker.join(60)
    assert app.loaded_name == app.model_picker.value == folders["mid"]
    app.max_new_tokens.value = 3
    app.generate()
    assert app.runs[-1].model == folders["mid"]


def test_the_busy_warning_goes_when_the_run_ends(app, folders):
    """Issue 26.18: after Generate+Stop pairs, "Already generating: press Stop first." stayed on screen."""
    app.model_picker.value = folders["mid"]
    app.wait()
    app.max_new_tokens.value = 400
    for _ in range(3):
        worker = streaming(app)
        assert app.generate() is False and "Already generating" in app.message.value  # a second click meanwhile
        app.stop()
        worker.join(60)
        assert not app.busy and "Already generating" not in app.message.value, app.message.value


def test_an_error_replaces_the_status_line(app):
    app.max_new_tokens.value = 3
    app.generate()
    assert "tokens/s" in app.status.value
    app.prompt.value = ""
    app.generate()
    assert "prompt is empty" in app.message.value and app.status.value == ""


def test_the_seed_box_shows_the_seed_the_run_used(app):
    app.preset.value = "balanced sampling"  # 64 new tokens
    app.generate()
    used = app.runs[-1].result.settings.seed
    assert used is not None and app.seed.value == used and app.preset.value == "balanced sampling"
    assert app.settings().seed is None  # not fixed: the next run draws its own
    app.fixed_seed.value = True
    app.generate()
    assert app.runs[-1].result.settings.seed == used and app.runs[-1].text == app.runs[-2].text


def test_restore_puts_a_run_back_and_it_repeats(app):
    app.prompt.value, app.preset.value, app.max_new_tokens.value = "Once upon a time", "creative", 6
    app.generate()
    first = app.runs[-1]
    app.prompt.value, app.preset.value, app.max_new_tokens.value = "Something else", "the tutorial's greedy", 4
    app.generate()
    assert app.restore(0) and app.prompt.value == "Once upon a time" and app.max_new_tokens.value == 6
    assert app.temperature.value == PRESETS["creative"].temperature and app.fixed_seed.value
    assert app.seed.value == first.result.settings.seed and "Restored run" in app.message.value
    app.generate()
    assert app.runs[-1].text == first.text  # the same seed and settings: the same text
    assert "<table" in app.history_view.value and "seed=" in app.history_view.value  # settings in the table


def test_settings_files_round_trip_and_a_bad_one_is_named(app):
    app.preset.value = "contrastive"
    app.max_new_tokens.value, app.stop_strings.value = 17, "\\n|END"
    saved = app.controls.settings_json()
    assert "base64," in app.controls.save_link.value
    expected = app.settings()
    app.preset.value = "creative"
    assert app.controls.load_settings_json(saved) and app.settings() == expected
    assert not app.controls.load_settings_json('{"kind": "opt-playground-settings", "settings": {"top_q": 1}}')
    assert "top_q" in app.message.value and app.settings() == expected
    assert not app.controls.load_settings_json("not json")


def test_continue_makes_the_text_the_prompt_and_goes_on(app):
    app.preset.value, app.max_new_tokens.value = "the tutorial's greedy", 4
    app.generate()
    first = app.runs[-1]
    app.continue_button.click()
    assert app.prompt.value == first.prompt + first.text and app.runs[-1].prompt == app.prompt.value
    assert len(app.runs) == 2 and app.runs[-1].result.token_ids


def test_the_prompt_token_count_follows_the_typing(app):
    app.prompt.value = "Hello"
    n = len(app.loaded.tokenizer("Hello").input_ids)
    assert f"prompt: {n} tokens" in app.prompt_count.value and "2048-token context" in app.prompt_count.value
    app.prompt.value = "Hello world, again and again"
    assert f"prompt: {n} tokens" not in app.prompt_count.value


def test_csv_cells_a_spreadsheet_would_run_are_neutralised_and_json_stays_exact(app):
    attacks = ["=HYPERLINK(\"http://evil.example\",\"x\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tTAB", "\rCR"]
    for text in attacks:
        app.max_new_tokens.value = 2
        app.generate(text)
    rows = list(csv.DictReader(io.StringIO(app.export_history("csv"))))
    assert [r["prompt"] for r in rows[-len(attacks):]] == ["'" + a for a in attacks]
    assert all(not r[k].startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows for k in r)
    assert [h["prompt"] for h in json.loads(app.export_history("json"))[-len(attacks):]] == attacks
    assert "download=\"opt-history.csv\"" in app.export_link.value  # one click: the links are always current


def test_a_typed_folder_joins_the_picker_and_loads(folders, tmp_path):
    pg = Playground(model=folders["pre"], device="cpu")
    pg.models.path.value = folders["post"]
    assert pg.loaded_name == pg.model_picker.value == folders["post"]
    pg.compare_picker.value = (folders["post"], folders["pre"])  # a checkbox for it in Side by side too
    assert pg.compare_picker.value == (folders["post"], folders["pre"])
    pg.loaded.unload()


def test_random_weights_build_here_and_generate(monkeypatch, tmp_path):
    from helpers.playground.random_model import RANDOM, RANDOM_LABEL

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    pg = Playground(model="opt-125m", device="cpu", load=False)
    assert (RANDOM_LABEL, RANDOM) in pg.model_picker.options
    pg.model_picker.value = RANDOM
    assert pg.loaded is not None and RANDOM_LABEL in pg.model_status.value
    pg.max_new_tokens.value = 4
    pg.generate()
    assert pg.runs[-1].result.token_ids and (tmp_path / "opt-notebooks" / "random-weights-opt" / "config.json").is_file()
    pg.loaded.unload()


@pytest.mark.parametrize("prompt", ["", "  \n\t"])
def test_the_command_line_refuses_an_empty_prompt_as_the_playground_does(app, folders, capsys, prompt):
    from helpers.cli.main import main

    code = main(["generate", "--model", folders["pre"], "--max-new-tokens", "3", "--", prompt])
    assert code == 2 and "The prompt is empty" in capsys.readouterr().err
    app.prompt.value = prompt
    assert app.generate() is False and "The prompt is empty" in app.message.value and not app.runs
