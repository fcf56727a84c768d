"""Every notebook runs top to bottom with a tiny local model, and is committed without outputs."""

import json
import re
import subprocess

import pytest
from notebook_runner import NOTEBOOKS, outputs_text, run_notebook

pytestmark = pytest.mark.notebook
ALL = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("name", ALL)
def test_committed_without_outputs(name):
    repo = NOTEBOOKS.parent
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", f"notebooks/{name}"], cwd=repo,
                             capture_output=True).returncode == 0
    text = subprocess.run(["git", "show", f"HEAD:notebooks/{name}"], cwd=repo, capture_output=True,
                          text=True).stdout if tracked else (NOTEBOOKS / name).read_text()
    nb = json.loads(text or (NOTEBOOKS / name).read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{name}: strip outputs before committing"


@pytest.mark.parametrize("name", ALL)
def test_skeleton_title_badge_setup_and_one_parameters_cell(name):
    nb = json.loads((NOTEBOOKS / name).read_text())
    cells = nb["cells"]
    first = "".join(cells[0]["source"])
    assert first.startswith("# ")
    badge = re.search(r"colab\.research\.google\.com/github/[^/]+/[^/]+/blob/main/(\S+?)\)", first)
    assert badge and badge.group(1) == f"notebooks/{name}", "the Colab badge must point at this file"
    setup = "".join(cells[1]["source"])
    assert "Setup" in setup and "find_spec(\"helpers\")" in setup and "requirements.txt" in setup
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is cells[2]
    names = set(re.findall(r"^([A-Z_]+) =", "".join(tagged[0]["source"]), re.M))
    for cell in cells[3:]:
        assigned = set(re.findall(r"^([A-Z_]+) =", "".join(cell["source"]), re.M))
        assert not names & assigned, f"{name}: a later cell redefines a parameter"


def test_every_setup_cell_installs_only_what_is_missing():
    """One setup cell for all: helpers/install.py (pip's dry run; nothing installed changes) instead of a
    blanket `pip install -r`, and Colab's custom widget manager only through enable_colab_widgets."""
    setups = {name: "".join(json.loads((NOTEBOOKS / name).read_text())["cells"][1]["source"]) for name in ALL}
    assert len(set(setups.values())) == 1, "the notebooks' setup cells differ"
    setup = setups[ALL[0]]
    assert '"install.py"' in setup and "package=repo" in setup and "enable_colab_widgets()" in setup
    assert "pip" not in setup and "enable_custom_widget_manager" not in setup


def test_00_setup_reports_the_machine_and_the_fit_table():
    nb = run_notebook("00_setup.ipynb", {"CONTEXT": 1024})
    text = outputs_text(nb)
    assert "RAM" in text and "opt-66b" in text and "fits" in text


def test_01_generate_runs_the_seed_walkthrough(tiny_pre_folder):
    nb = run_notebook("01_generate.ipynb", {"MODEL": str(tiny_pre_folder), "DEVICE": "cpu", "MAX_NEW_TOKENS": 12})
    text = outputs_text(nb)
    assert "[2, 42968" in text  # the first prompt's ids start with OPT's BOS
    assert "the tutorial's loop (no cache)" in text and "cached loop" in text  # both loops ran, asserted against helpers
    assert "of the tutorial loop's time" in text and "same tokens as the tutorial's" in text
    assert "Text classification is a machine learning technique" in text
    assert "tokens/s, first token after" in text


def test_02_metaseq_clones_converts_and_matches_the_reference(tmp_path):
    from metaseq_writer import write_checkpoint
    from test_fetch import make_lfs_repo, needs_git_lfs  # noqa: F401
    from tiny_models import save_tiny_model, tiny_model

    from helpers.loading.fetch import git_has_lfs

    if not git_has_lfs():
        pytest.skip("git-lfs is not installed (make test installs it as root)")
    model = tiny_model("post-ln", seed=21)  # the 350M layout, as the notebook's default
    staging = tmp_path / "staging"
    write_checkpoint(model, staging / "model", version=False)
    repo = make_lfs_repo(tmp_path / "opt_metaseq_tiny", {"model/reshard.pt": (staging / "model" / "reshard.pt").read_bytes()})
    reference = save_tiny_model(tmp_path / "reference", "post-ln", seed=21)
    nb = run_notebook("02_metaseq_checkpoints.ipynb", {
        "METASEQ_REPO": f"file://{repo}", "CHECKPOINT": "model/reshard.pt", "SIZE": "",
        "REFERENCE": str(reference), "WORKDIR": str(tmp_path / "work"), "DEVICE": "cpu",
    })
    text = outputs_text(nb)
    assert "reshard.pt" in text and "unflattened, single file" in text
    assert "checkpoint files:" in text and "pointers left (not fetched): none" in text  # each step showed its result
    assert "| yes |" in text and "| no |" not in text  # same greedy tokens as the reference for every prompt
    assert "metaseq and Megatron-LM are not installed" in text
    assert (tmp_path / "work" / "converted" / "model.safetensors").exists()


def test_07_benchmarks_renders_committed_results_and_runs_live(tiny_pre_folder):
    nb = run_notebook("07_benchmarks.ipynb", {"LIVE_MODEL": str(tiny_pre_folder), "LIVE_NEW_TOKENS": 6,
                                                "LIVE_METHODS": ["hf", "auto"]})
    text = outputs_text(nb)
    assert "cpu-opt-125m.json" in text and "roofline" in text and "tutorial" in text
    assert "auto: batch 1" in text  # the live run's progress
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # two committed results and the live one


def test_06_big_models_plans_every_size_and_runs_the_examples(tiny_pre_folder):
    nb = run_notebook("06_big_models.ipynb", {"EXAMPLES": [[str(tiny_pre_folder), "auto"], [str(tiny_pre_folder), "int8"]],
                                               "MAX_NEW_TOKENS": 5, "CONTEXT": 512})
    text = outputs_text(nb)
    assert "opt-66b" in text and "Colab T4" in text and "decoder layers per device" in text
    assert "predicted" in text and "measured" in text  # the auto example ran and was compared
    assert "needs a CUDA GPU" in text  # the int8 example on a CPU says why and what works instead


def test_03_compare_sizes_runs_every_model_and_plots(tiny_pre_folder, tiny_folder):
    nb = run_notebook("03_compare_sizes.ipynb", {"MODELS": [str(tiny_pre_folder), str(tiny_folder)],
                                                  "MAX_NEW_TOKENS": 8})
    text = outputs_text(nb)
    assert "greedy (the tutorial's)" in text and "balanced sampling" in text and "repeated 3-grams" in text
    assert "Text classification is a machine learning technique" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_04_decoding_strategies_scores_and_explains_the_seed(tiny_pre_folder, tiny_folder):
    strategies = {"greedy": {"do_sample": False}, "my top-p 0.8": {"top_p": 0.8},
                  "contrastive (alpha 0.6, k 4)": {"do_sample": False, "penalty_alpha": 0.6, "top_k": 4}}
    nb = run_notebook("04_decoding_strategies.ipynb", {"MODEL": str(tiny_folder), "JUDGE": str(tiny_pre_folder),
                                                        "SEED_MODEL": str(tiny_pre_folder), "MAX_NEW_TOKENS": 10,
                                                        "STRATEGIES": strategies})
    text = outputs_text(nb)
    assert "contrastive (alpha 0.6, k 4)" in text and "judge perplexity" in text
    assert "my top-p 0.8" in text and "beam search (4)" not in text  # the strategies are the parameter's
    assert "dropped" in text and "none" in text and "</s>" in text  # all eight of the seed's conditions
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_09_finetune_trains_on_the_sample_text_and_shows_before_and_after(tiny_pre_folder, tmp_path):
    import html

    out = tmp_path / "adapter"
    nb = run_notebook("09_finetune.ipynb", {"MODEL": str(tiny_pre_folder), "STEPS": 4, "SEQ_LEN": 64,
                                             "BATCH_SIZE": 2, "NEW_TOKENS": 8, "OUT": str(out)})
    text = outputs_text(nb)
    assert "as_you_like_it.txt (1 document): " in text and "held out)" in text  # the shipped sample, packed
    assert "with lora-fp32 on cpu: peak" in text  # the planner's choice on this CPU, with its figures
    assert "4 steps with lora-fp32" in text and f"adapter saved in {out}" in text
    assert "perplexity" in text and "adapter_model.safetensors" in text
    assert "checkpoints" not in text.split("adapter saved in")[-1]  # what you keep, without the checkpoints
    assert "Nothing was uploaded" in text
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    shown = [o["data"]["text/html"] for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    side_by_side = next(h for h in shown if "after (with the adapter)" in h)
    assert all(html.escape(prompt) in side_by_side for prompt in _parameters("09_finetune.ipynb")["PROMPTS"])
    widgets = [w["state"] for w in nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"].values()]
    assert {"value": 4, "bar_style": "success"}.items() <= next(w for w in widgets if w.get("max") == 4).items()
    assert any(str(w.get("value")).startswith("done: 4 steps, held-out perplexity") for w in widgets)  # the live view


def _parameters(name: str) -> dict:
    """The values a notebook's parameters cell sets (plain literals)."""
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    values: dict = {}
    exec("".join(next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))["source"]), values)
    return {k: v for k, v in values.items() if k.isupper()}


def test_04_strategies_are_in_its_parameters_cell_and_match_the_helpers_default():
    from helpers.analysis.comparison import STRATEGIES
    from helpers.parameters import settings_table

    table = settings_table("STRATEGIES", _parameters("04_decoding_strategies.ipynb")["STRATEGIES"])
    assert {k: v.replace(max_new_tokens=60) for k, v in table.items()} == STRATEGIES


@pytest.mark.parametrize("name, parameters, says", [
    ("01_generate.ipynb", {"PROMPTS": []}, "PROMPTS takes a list of one or more prompts (strings)"),
    ("01_generate.ipynb", {"PROMPTS": "Hello world"}, "not one string: 'Hello world' (str)"),
    ("01_generate.ipynb", {"MAX_NEW_TOKENS": 0}, "MAX_NEW_TOKENS takes a whole number of at least 1"),
    ("03_compare_sizes.ipynb", {"PROMPTS": []}, "PROMPTS takes a list of one or more prompts"),
    ("03_compare_sizes.ipynb", {"MODELS": "opt-125m"}, "MODELS takes a list of one or more models"),
    ("04_decoding_strategies.ipynb", {"STRATEGIES": {"hot": {"temprature": 2.0}}},
     "STRATEGIES['hot'] has temprature, which GenerationSettings does not take"),
    ("07_benchmarks.ipynb", {"RESULTS": "/nonexistent/benchmarks"}, "'/nonexistent/benchmarks' does not exist"),
    ("07_benchmarks.ipynb", {"RESULTS": "../README.md"}, "'../README.md' is a file, not a folder"),
    ("09_finetune.ipynb", {"STEPS": 0}, "STEPS takes a whole number of at least 1"),
    ("09_finetune.ipynb", {"DATA": "upload"}, 'DATA = "upload" asks for files in Colab'),
])
def test_a_bad_parameter_stops_at_the_check_cell_with_one_line(name, parameters, says):
    """Issue 26 items 9 and 10: before, PROMPTS=[] was an IndexError, a string ran two cells on 'H', and a
    missing RESULTS ran to the end showing nothing."""
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError) as caught:
        run_notebook(name, parameters, timeout=120)
    shown = str(caught.value)
    assert says in shown and "ParameterError: " in shown
    assert "from helpers.parameters import" in shown  # it stopped in the check cell, before any work
    assert "Traceback" not in shown and "File " not in shown  # one line, no traceback


@pytest.mark.parametrize("name", ["01_generate.ipynb", "02_metaseq_checkpoints.ipynb", "03_compare_sizes.ipynb",
                                  "04_decoding_strategies.ipynb", "07_benchmarks.ipynb", "09_finetune.ipynb"])
def test_each_step_is_introduced_by_markdown_and_the_parameters_are_checked_next(name):
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    for i, cell in enumerate(cells[3:], start=3):
        if cell["cell_type"] == "code":
            assert cells[i - 1]["cell_type"] == "markdown", f"{name}: cell {i} has no markdown before it"
    assert "from helpers.parameters import" in "".join(cells[4]["source"])


def test_01_writes_both_loops_in_its_cells():
    """The lesson is the loops themselves, a dozen lines each, checked against helpers' tested versions."""
    cells = ["".join(c["source"]) for c in json.loads((NOTEBOOKS / "01_generate.ipynb").read_text())["cells"]]
    tutorial = next(c for c in cells if "def tutorial_loop(" in c)
    cached = next(c for c in cells if "def cached_loop(" in c)
    assert len(tutorial.split("def tutorial_loop(")[1].splitlines()) <= 15
    assert len(cached.split("def cached_loop(")[1].splitlines()) <= 15
    assert "use_cache=False" in tutorial and "CACHE_ARG: cache" in cached and "[[next_id]]" in cached
    checks = next(c for c in cells if "assert runs[method][0] == generate(" in c)
    assert 'method=method' in checks and '("tutorial", tutorial_loop), ("cached", cached_loop)' in checks
