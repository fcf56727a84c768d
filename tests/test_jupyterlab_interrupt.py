"""JupyterLab's Interrupt (Kernel menu, and its REST call) ends the playground's generation like Stop, in a real
JupyterLab driven through Debian's Chromium; the app stays usable afterwards.

JupyterLab 4.6 sends widget messages over a kernel subshell of their own (its `commsOverSubshells` setting,
on by default with ipykernel 7): from the first widget reply on, Generate's callback runs in that subshell's
thread, where Python cannot receive a signal and the main shell's queue holds none of its messages. Every
run here comes after a first one, as a user's second Generate does: the case that used to ignore both."""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest
from test_browser import CHROMIUM, FLAGS, REPO, TOKEN, Server, free_port, run_all_cells, text_of, wait_loaded

pytestmark = pytest.mark.browser

MANY = 512  # new tokens (the slider's maximum): minutes of work here, so only an interrupt ends the run early


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from tiny_models import save_tiny_model

    base = tmp_path_factory.mktemp("interrupt")
    model = save_tiny_model(base / "mid", "pre-ln", seed=3, hidden_size=512, ffn_dim=2048, num_hidden_layers=6,
                            word_embed_proj_dim=512)
    root = base / "root"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / "05_playground.ipynb", root / "05_playground.ipynb")
    home = base / "home"
    env = {**os.environ, "OPT_MODEL": str(model), "OPT_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "PYTHONUNBUFFERED": "1"}
    port = free_port()
    server = Server([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                     "--allow-root", f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={TOKEN}",
                     "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                    env, base / "lab.log", f"http://127.0.0.1:{port}/lab?token={TOKEN}", REPO)
    server.base = f"http://127.0.0.1:{port}"
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(lab):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not at {CHROMIUM}: `sudo apt-get install -y chromium`.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(f"{lab.base}/lab/tree/05_playground.ipynb?token={TOKEN}", timeout=120_000)
        run_all_cells(page)
        wait_loaded(page)
        short_run(page)  # the first run: its replies route the widgets' later messages to their subshell
        yield page
        browser.close()


def set_new_tokens(page, n: int) -> None:
    readout = page.locator(".opt-max-new-tokens .widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(n))
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => document.querySelector('.opt-max-new-tokens .widget-readout').innerText.trim() "
                           f"=== '{n}'")


def start_long_generation(page) -> None:
    page.fill(".opt-prompt textarea", "A long story about the sea")
    set_new_tokens(page, MANY)
    page.click(".opt-generate")
    page.wait_for_function("() => document.querySelector('.opt-status').innerText.includes('generating')",
                           timeout=120_000)


def tokens_in_status(page) -> int:
    return int(text_of(page, ".opt-status").split(" tokens")[0])


def wait_stopped(page) -> str:
    """The status once the run has ended; the bound is generous (a loaded 2-core machine), far below the
    minutes MANY tokens take."""
    page.wait_for_function("() => document.querySelector('.opt-status').innerText.includes('finished')",
                           timeout=60_000)
    return text_of(page, ".opt-status")


def short_run(page) -> None:
    """A short run starts and finishes: the app is usable."""
    page.wait_for_function("() => !document.querySelector('.opt-generate').disabled", timeout=30_000)
    set_new_tokens(page, 8)
    page.click(".opt-generate")
    page.wait_for_function("() => /^\\d+ tokens .*finished: (length|eos)/.test("
                           "document.querySelector('.opt-status').innerText)", timeout=120_000)


def test_the_kernel_menu_interrupt_ends_a_generation_like_stop(page):
    start_long_generation(page)
    page.click(".lm-MenuBar-itemLabel:text-is('Kernel')", timeout=30_000)
    page.click(".lm-Menu-itemLabel:text-is('Interrupt Kernel')", timeout=30_000)
    status = wait_stopped(page)
    assert "finished: stopped" in status and tokens_in_status(page) < MANY, status
    # the message is a widget update of its own, after the status's: on a loaded machine it can come a moment later
    page.wait_for_function("() => document.querySelector('.opt-playground').innerText.includes('Interrupted')",
                           timeout=30_000)
    short_run(page)


def test_the_rest_interrupt_ends_a_generation_and_the_app_still_works(page, lab):
    start_long_generation(page)
    with urllib.request.urlopen(f"{lab.base}/api/kernels?token={TOKEN}", timeout=30) as r:
        kernels = json.load(r)
    assert len(kernels) == 1
    request = urllib.request.Request(f"{lab.base}/api/kernels/{kernels[0]['id']}/interrupt?token={TOKEN}",
                                     method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=30) as r:
        assert r.status == 204
    status = wait_stopped(page)
    assert "finished: stopped" in status and tokens_in_status(page) < MANY, status
    short_run(page)


def test_stop_ends_a_later_generation(page):
    start_long_generation(page)
    page.click(".opt-stop")
    status = wait_stopped(page)
    assert "finished: stopped" in status and tokens_in_status(page) < MANY, status
    short_run(page)
