"""docs/prompt-path.md stays true: the files one prompt enters, traced during real runs, are the ones it lists."""

import re
import sys
import threading
from pathlib import Path

import pytest

from helpers.cli.main import main
from helpers.generation.run import generate
from helpers.generation.settings import GenerationSettings
from helpers.generation.streaming import stream

ROOT = Path(__file__).parents[1]
PAGE = ROOT / "docs" / "prompt-path.md"
HELPERS = str(ROOT / "helpers")
FORWARDS = {("modeling_opt.py", "forward"), ("cpu_engine.py", "forward")}  # the model's forward pass, either kind
SETTINGS = GenerationSettings.greedy(max_new_tokens=6)


def listed(name: str) -> list[str]:
    """The files in the page's `name` list: the `helpers/...` paths between its marker comments, in order."""
    text = PAGE.read_text()
    block = text.split(f"<!-- {name}:start -->")[1].split(f"<!-- {name}:end -->")[0]
    return [line for line in re.findall(r"`(helpers/[\w/]+\.py)`", block)]


def _relative(filename: str) -> str | None:
    return str(Path(filename).relative_to(ROOT)) if filename.startswith(HELPERS) else None


def traced(call) -> tuple[set[str], list[str]]:
    """(every helpers file whose functions ran during `call`, in any thread; the helpers files on the call
    stack, outermost first, each time the model's forward pass was entered in the calling thread)."""
    entered, chain = set(), []

    def profile(frame, event, arg):
        if event != "call" or frame.f_code.co_name == "<module>":  # imports are not the prompt's path
            return
        if (file := _relative(frame.f_code.co_filename)) is not None:
            entered.add(file)
        if (Path(frame.f_code.co_filename).name, frame.f_code.co_name) in FORWARDS and threading.current_thread() \
                is threading.main_thread():
            stack, f = [], frame
            while f is not None:
                if (file := _relative(f.f_code.co_filename)) is not None:
                    stack.append(file)
                f = f.f_back
            chain.extend(f for f in dict.fromkeys(reversed(stack)) if f not in chain)

    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return entered, chain


def test_the_page_lists_each_file_once_and_each_exists():
    for name in ("library", "playground", "command-line"):
        files = listed(name)
        assert files and len(files) == len(set(files)), name
        assert all((ROOT / f).is_file() for f in files), name


@pytest.mark.parametrize("method", ["cpu-fast", "cached", "hf", "tutorial"])
def test_the_library_files_a_prompt_enters_are_the_listed_ones(tiny, tokenizer, method):
    """What the playground and the command line call (`stream`; `generate` is the same without streaming.py)."""
    extra = {f for backend, f in re.findall(r"\| `([\w-]+)` \| `(helpers/[\w/]+\.py)`", PAGE.read_text())
             if backend == method}
    entered, _ = traced(lambda: "".join(stream(tiny, tokenizer, "Hello", SETTINGS, method=method, top_logprobs=2,
                                               on_step=lambda: None)))
    assert entered == set(listed("library")) | extra, sorted(entered)
    entered, _ = traced(lambda: generate(tiny, tokenizer, "Hello", SETTINGS, method=method, top_logprobs=2))
    assert entered == (set(listed("library")) - {"helpers/generation/streaming.py"}) | extra, sorted(entered)


def test_the_command_line_reaches_the_forward_pass_through_the_listed_files(tiny_pre_folder, capsys):
    _, chain = traced(lambda: main(["generate", "--model", str(tiny_pre_folder), "--greedy", "--max-new-tokens", "3",
                                    "Hello"]))
    capsys.readouterr()
    assert chain == listed("command-line"), chain


def test_the_playground_reaches_the_forward_pass_through_the_listed_files(tiny_pre_folder):
    from helpers.playground.app import Playground

    app = Playground(model=str(tiny_pre_folder), device="cpu")
    app.wait()
    _, chain = traced(lambda: app.generate("Hello"))  # what the Generate button calls
    assert chain == listed("playground"), chain
