"""The playground's layout and keys in a real browser (Voila as `make playground` serves it, Chromium):
the first screen at 1280x800, every element inside the window at 800 and 400 px, Ctrl+Enter and Escape,
Restore from History, a settings file round trip, the dark theme. Screenshots in test-artifacts/browser/."""

from __future__ import annotations

import json
import os

import pytest

# ruff: noqa: F811 (the fixtures below are test_browser's, taken by name)
from test_browser import ARTIFACTS, browser, lab, models, page_of, run_all_cells, shot, voila, wait_loaded  # noqa: F401

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server_env(models, tmp_path_factory):
    """test_browser's, with a cache of its own for the random-weight model, and the device left to the app (the CPU
    here), as `make playground` leaves it: the plan picker shows."""
    home = tmp_path_factory.mktemp("jupyter-home")
    return {**os.environ, "OPT_MODEL": models["mid"], "OPT_EXTRA_MODELS": models["tiny"],
            "HF_HUB_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(home / "cache")}

BOXES = """sel => [...document.querySelectorAll(sel)].filter(e => e.getBoundingClientRect().width > 0).map(e => {
  const b = e.getBoundingClientRect(); return {left: b.left, right: b.right, top: b.top, bottom: b.bottom}; })"""
# Every visible element of the app that is not inside something scrolling sideways (a table wider than a
# phone scrolls inside its box: reachable), with its box.
OUTSIDE = """width => {
  const root = document.querySelector('.opt-playground');
  const scrolls = e => { for (let a = e.parentElement; a && a !== root; a = a.parentElement)
                           if (['auto', 'scroll'].includes(getComputedStyle(a).overflowX)) return true;
                         return false; };
  return [...root.querySelectorAll('*')].filter(e => { const b = e.getBoundingClientRect();
      return b.width > 0 && b.height > 0 && (b.left < -0.5 || b.right > width + 0.5) && !scrolls(e); })
    .map(e => `${[...e.classList].join('.') || e.tagName} ${e.innerText ? e.innerText.slice(0, 20) : ''}`);
}"""


# Words of the history table drawn on more than one line (a word broken inside, "lengt/h").
BROKEN_WORDS = """() => {
  const broken = [];
  for (const cell of document.querySelectorAll('.opt-history td, .opt-history th')) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.textContent.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const tops = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top)));
        if (tops.size > 1) broken.push(m[0]);
      }
    }
  }
  return broken;
}"""


def box(page, selector: str) -> dict:
    boxes = page.evaluate(BOXES, selector)
    assert boxes, f"{selector} is not on the page"
    return boxes[0]


def status(page) -> str:
    return page.inner_text(".opt-status")


def wait_finished(page, timeout: float = 120_000) -> None:
    page.wait_for_function("() => document.querySelector('.opt-status').innerText.includes('finished')",
                           timeout=timeout)


def open_app(page_of, voila, width: int, height: int, query: str = ""):
    page = page_of(width, height)
    page.goto(voila.url + query, timeout=120_000)
    wait_loaded(page)
    page.select_option(".opt-preset select", "the tutorial's greedy")  # 30 tokens: quick on the CPU
    return page


def test_the_first_screen_at_1280x800_has_the_prompt_generate_and_the_streaming_output(page_of, voila):
    page = open_app(page_of, voila, 1280, 800)
    for selector in (".opt-prompt textarea", "button.opt-generate", "button.opt-stop", ".opt-output"):
        b = box(page, selector)
        assert 0 <= b["top"] and b["bottom"] <= 800 and 0 <= b["left"] and b["right"] <= 1280, (selector, b)
    settings = box(page, ".opt-settings-panel")
    assert settings["left"] >= box(page, ".opt-output")["right"]  # the settings in a column beside the output
    model, plan = box(page, ".opt-model select"), box(page, ".opt-plan select")
    assert abs(plan["top"] - model["top"]) < 2 and plan["left"] > model["right"]  # beside the model picker
    plans = [o.replace("\xa0", " ") for o in page.eval_on_selector(".opt-plan select", "s => [...s.options].map(o => o.textContent)")]
    assert plans[0] == "auto (fp32-cpu)" and any(p.startswith("int8-weights-cpu · ") for p in plans), plans
    page.fill(".opt-prompt textarea", "The first screen")
    page.click("button.opt-generate")
    page.wait_for_function("() => document.querySelector('.opt-output').innerText.length > 20", timeout=60_000)
    wait_finished(page)
    assert page.evaluate("() => window.scrollY") == 0
    out = box(page, ".opt-output .opt-text")
    assert out["bottom"] <= 800 and page.inner_text(".opt-output").startswith("The first screen")
    shot(page, "layout-1280x800")


@pytest.mark.parametrize("width", [800, 400])
def test_everything_fits_the_window_and_the_output_sits_under_the_prompt(page_of, voila, width):
    page = open_app(page_of, voila, width, 900)
    page.fill(".opt-prompt textarea", "A narrow screen")
    page.click("button.opt-generate")
    wait_finished(page)
    tab = ".opt-tabs .lm-TabBar-tab:has-text('{}'), .opt-tabs .p-TabBar-tab:has-text('{}')"
    for name in ("Output", "Probabilities", "Side by side", "History"):
        page.click(tab.format(name, name))
        page.wait_for_timeout(300)
        assert page.evaluate(OUTSIDE, width) == [], name
        assert page.evaluate("() => document.documentElement.scrollWidth") <= width
        shot(page, f"layout-{width}-{name.replace(' ', '-').lower()}")
        if name == "History":
            assert page.evaluate(BROKEN_WORDS) == []
    titles = page.evaluate("""() => [...document.querySelectorAll('.opt-tabs .lm-TabBar-tabLabel, .opt-tabs .p-TabBar-tabLabel')]
        .map(e => e.scrollWidth <= e.clientWidth + 1)""")
    assert all(titles), "a tab title is cut"
    page.click(tab.format("Output", "Output"))
    prompt, output, settings = box(page, ".opt-prompt textarea"), box(page, ".opt-output"), box(page, ".opt-settings-panel")
    assert prompt["bottom"] < output["top"] < settings["top"] if width == 400 else prompt["bottom"] < output["top"]


def test_ctrl_enter_generates_and_escape_stops(page_of, voila):
    page = open_app(page_of, voila, 1280, 800)
    page.fill(".opt-prompt textarea", "Keys only")
    page.focus(".opt-prompt textarea")
    page.keyboard.press("Control+Enter")
    wait_finished(page)
    assert page.inner_text(".opt-output").startswith("Keys only")
    page.select_option(".opt-preset select", "balanced sampling")
    page.locator(".opt-max-new-tokens .widget-readout").click()
    page.keyboard.press("Control+A")
    page.keyboard.type("500")
    page.keyboard.press("Enter")
    page.focus(".opt-prompt textarea")
    page.keyboard.press("Control+Enter")
    page.wait_for_function("() => document.querySelector('.opt-status').innerText.includes('generating')",
                           timeout=60_000)
    page.keyboard.press("Escape")
    page.wait_for_function("() => document.querySelector('.opt-status').innerText.includes('finished: stopped')",
                           timeout=60_000)


def test_restore_from_history_and_copy(page_of, voila):
    page = open_app(page_of, voila, 1280, 900)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    for prompt in ("First prompt", "Second prompt"):
        page.fill(".opt-prompt textarea", prompt)
        page.click("button.opt-generate")
        page.wait_for_function(f"() => document.querySelector('.opt-output').innerText.startsWith({prompt!r})")
        wait_finished(page)
    page.click(".opt-copy")
    page.wait_for_function("() => document.querySelector('.opt-copy').innerText === 'Copied'")
    assert page.evaluate("() => navigator.clipboard.readText()") == page.inner_text(".opt-output .opt-text")
    page.click(".opt-tabs .lm-TabBar-tab:has-text('History'), .opt-tabs .p-TabBar-tab:has-text('History')")
    page.select_option(".opt-restore-picker select", index=1)  # newest first: run 1 is the second entry
    page.click("button.opt-restore")
    page.wait_for_function("() => document.querySelector('.opt-prompt textarea').value === 'First prompt'")
    page.wait_for_function("() => document.querySelector('.opt-message').innerText.includes('Restored run 1')")
    assert page.inner_text(".opt-output").startswith("First prompt")
    page.click(".opt-tabs .lm-TabBar-tab:has-text('History'), .opt-tabs .p-TabBar-tab:has-text('History')")
    assert "settings" in page.inner_text(".opt-history table")
    with page.expect_download() as download:
        page.click(".opt-export-json")
    runs = json.loads(open(download.value.path()).read())
    assert [r["prompt"] for r in runs] == ["First prompt", "Second prompt"]


def test_settings_file_round_trip(page_of, voila, tmp_path):
    page = open_app(page_of, voila, 1280, 900)
    page.select_option(".opt-preset select", "creative")
    page.wait_for_function("() => document.querySelector('.opt-temperature .widget-readout').innerText.trim() === '1.00'")
    with page.expect_download() as download:
        page.click(".opt-save-settings a")
    saved = tmp_path / "mine.json"
    download.value.save_as(saved)
    assert json.loads(saved.read_text())["settings"]["temperature"] == 1.0
    page.select_option(".opt-preset select", "the tutorial's greedy")
    page.wait_for_function("() => !document.querySelector('.opt-do-sample input').checked")
    with page.expect_file_chooser() as chooser:  # ipywidgets' file input is not in the page: its button opens it
        page.click(".opt-load-settings")
    chooser.value.set_files(str(saved))
    page.wait_for_function("() => document.querySelector('.opt-temperature .widget-readout').innerText.trim() === '1.00'")
    page.wait_for_function("() => document.querySelector('.opt-message').innerText.includes('Settings loaded')")
    assert page.is_checked(".opt-do-sample input")


def test_the_dark_theme_is_followed(page_of, voila):
    page = open_app(page_of, voila, 1280, 800, "?theme=dark")
    page.fill(".opt-prompt textarea", "In the dark")
    page.click("button.opt-generate")
    wait_finished(page)
    colors = page.evaluate("""() => { const o = document.querySelector('.opt-output'); const s = getComputedStyle(o);
        const lum = c => { const [r, g, b] = c.match(/\\d+/g).map(Number); return (r + g + b) / 3; };
        return {bg: lum(s.backgroundColor), fg: lum(getComputedStyle(o.querySelector('.opt-text')).color)}; }""")
    assert colors["bg"] < 80 and colors["fg"] > 160, colors
    shot(page, "layout-dark")


def test_random_weights_and_the_docs_screenshots(page_of, voila):
    """A newcomer without weights picks "random weights (to try the app)" and generates; the screenshots of
    docs/playground.md (test-artifacts/browser/docs-playground*.png, copied to docs/ by hand)."""
    page = page_of(1280, 800)
    page.goto(voila.url, timeout=120_000)
    wait_loaded(page)
    page.select_option(".opt-model select", "random weights (to try the app)")
    page.wait_for_function("() => /random weights.*loaded in/.test(document.querySelector('.opt-model-status').innerText)",
                           timeout=120_000)
    page.select_option(".opt-preset select", "balanced sampling")
    page.fill(".opt-prompt textarea", "The best way to learn a new language is")
    page.keyboard.press("Control+Enter")
    wait_finished(page)
    assert "seed" in status(page) and page.inner_text(".opt-output").startswith("The best way")
    page.screenshot(path=str(ARTIFACTS / "docs-playground.png"))
    page.set_viewport_size({"width": 400, "height": 860})
    page.wait_for_timeout(500)
    assert page.evaluate(OUTSIDE, 400) == []
    page.screenshot(path=str(ARTIFACTS / "docs-playground-narrow.png"))


def test_picking_a_plan_in_the_browser_reloads_the_model_with_it(page_of, voila):
    """The plan picker as a user meets it: bf16-cpu picked, the model loads again in bf16 and generates."""
    page = open_app(page_of, voila, 1280, 800)
    labels = [o.replace("\xa0", " ") for o in page.eval_on_selector(".opt-plan select",
                                                                      "s => [...s.options].map(o => o.textContent)")]
    page.select_option(".opt-plan select", index=next(i for i, label in enumerate(labels)
                                                       if label.startswith("bf16-cpu ")))
    page.wait_for_function("() => /bfloat16.*loaded in/.test(document.querySelector('.opt-model-status').innerText)",
                           timeout=120_000)
    page.fill(".opt-prompt textarea", "In bf16")
    page.click("button.opt-generate")
    wait_finished(page)
    assert page.inner_text(".opt-output").startswith("In bf16") and "bf16-cpu" in page.inner_text(".opt-plan")
    shot(page, "plan-bf16-1280x800")


def test_ctrl_enter_in_jupyterlab_generates_without_running_the_cell_again(page_of, lab):
    page = page_of(1400, 1000)
    page.goto(lab.url, timeout=120_000)
    run_all_cells(page)
    wait_loaded(page)
    prompts = "() => [...document.querySelectorAll('.jp-InputPrompt')].map(p => p.innerText).join(' ')"
    page.wait_for_function(f"() => !({prompts})().includes('*')", timeout=60_000)  # every cell done
    before = page.evaluate(prompts)
    page.fill(".opt-prompt textarea", "Keys in JupyterLab")
    page.focus(".opt-prompt textarea")
    page.keyboard.press("Control+Enter")
    wait_finished(page)
    assert page.inner_text(".opt-output").startswith("Keys in JupyterLab")
    assert page.evaluate(prompts) == before  # the cell did not run again
    assert len(page.query_selector_all(".opt-playground")) == 1
