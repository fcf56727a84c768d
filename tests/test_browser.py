"""The playground in a real browser: Voila and JupyterLab on 127.0.0.1, Debian's Chromium driven by Playwright.

Screenshots land in test-artifacts/browser/. The model is a random-weight OPT big enough (46M parameters)
that a CPU streams it visibly, token by token.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "opt-playground-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


class Server:
    """A server process in its own process group, bound to 127.0.0.1, stopped with everything it started."""

    def __init__(self, args: list[str], env: dict, log: Path, url: str, cwd: Path):
        self.log, self.url = log, url
        self.process = subprocess.Popen(args, env=env, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        wait_http(url, self.process, log)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from helpers.fixtures import save_tiny_model

    base = tmp_path_factory.mktemp("browser-models")
    return {
        "mid": str(save_tiny_model(base / "mid", "pre-ln", seed=3, hidden_size=512, ffn_dim=2048,
                                   num_hidden_layers=6, word_embed_proj_dim=512)),
        "tiny": str(save_tiny_model(base / "tiny", "post-ln", seed=4)),
    }


@pytest.fixture(scope="module")
def server_env(models, tmp_path_factory):
    home = tmp_path_factory.mktemp("jupyter-home")
    return {**os.environ, "OPT_MODEL": models["mid"], "OPT_EXTRA_MODELS": models["tiny"], "OPT_DEVICE": "cpu",
            "HF_HUB_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not at {CHROMIUM}: run `make test` as root (it installs Debian's chromium), "
                    "or `sudo apt-get install -y chromium`.")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def voila(server_env, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("logs") / "voila.log"
    server = Server([sys.executable, "-m", "voila", str(REPO / "notebooks" / "05_playground.ipynb"), "--no-browser",
                     f"--port={port}", "--Voila.ip=127.0.0.1", "--ServerApp.allow_root=True"],
                    server_env, log, f"http://127.0.0.1:{port}/", REPO)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def lab(server_env, tmp_path_factory):
    port = free_port()
    root = tmp_path_factory.mktemp("lab-root")
    shutil.copy(REPO / "notebooks" / "05_playground.ipynb", root / "05_playground.ipynb")
    log = tmp_path_factory.mktemp("logs") / "lab.log"
    server = Server([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                     "--allow-root", f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={TOKEN}",
                     "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                    server_env, log, f"http://127.0.0.1:{port}/lab?token={TOKEN}", REPO)
    server.url = f"http://127.0.0.1:{port}/lab/tree/05_playground.ipynb?token={TOKEN}"
    yield server
    server.stop()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def text_of(page, selector: str) -> str:
    return page.eval_on_selector(selector, "e => e.innerText")


def wait_loaded(page, timeout: float = 180_000) -> None:
    page.wait_for_selector(".opt-playground", timeout=timeout)
    page.wait_for_function("() => (document.querySelector('.opt-model-status')?.innerText || '').includes('loaded in')",
                           timeout=timeout)


def drive_playground(page, name: str) -> None:
    """Type, move sliders, Generate, see it stream, Stop, open the probabilities, branch."""
    wait_loaded(page)
    shot(page, f"{name}-1-loaded")

    page.fill(".opt-prompt textarea", "The history of natural language processing")
    temperature = page.locator(".opt-temperature .noUi-handle")
    temperature.focus()
    for _ in range(4):
        temperature.press("ArrowRight")
    page.wait_for_function("() => document.querySelector('.opt-temperature .widget-readout').innerText.trim() !== '0.70'")
    page.wait_for_function("() => document.querySelector('.opt-preset select').value === 'custom'")  # the kernel saw it
    readout = page.locator(".opt-max-new-tokens .widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("300")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('.opt-max-new-tokens .widget-readout').innerText.trim() === '300'")

    page.click(".opt-generate")
    lengths, deadline = [], time.time() + 120
    while time.time() < deadline:
        length = len(text_of(page, ".opt-output"))
        if not lengths or length != lengths[-1]:
            lengths.append(length)
        if len(lengths) >= 6:
            break
        time.sleep(0.02)
    shot(page, f"{name}-2-streaming")
    assert len(lengths) >= 6 and lengths == sorted(lengths), f"no streaming seen: {lengths}"
    assert lengths[1] > 0 and lengths[-1] > lengths[1]  # intermediate states, then more text

    page.click(".opt-stop")
    page.wait_for_function("() => document.querySelector('.opt-status').innerText.includes('finished: stopped')",
                           timeout=60_000)
    status = text_of(page, ".opt-status")
    assert int(status.split(" tokens")[0]) < 300 and "tokens/s" in status
    shot(page, f"{name}-3-stopped")
    output = text_of(page, ".opt-output")
    assert output.strip().startswith("The history of natural language processing")

    page.click(".opt-tabs .lm-TabBar-tab:has-text('Probabilities')")
    tokens = page.locator(".opt-token")
    tokens.first.wait_for(timeout=30_000)
    assert tokens.count() == int(status.split(" tokens")[0])
    title = tokens.nth(2).get_attribute("title")
    assert title and title.count("%") == 6  # the token's probability and its five alternatives
    tokens.nth(2).hover()
    tokens.nth(2).click()
    alternatives = page.locator(".opt-alternative")
    alternatives.first.wait_for(timeout=30_000)
    assert alternatives.count() == 5
    shot(page, f"{name}-4-probabilities")

    alternatives.nth(1).click()
    page.click(".opt-tabs .lm-TabBar-tab:has-text('Branches')")
    page.wait_for_function("() => (document.querySelector('.opt-branches')?.innerText || '').includes('branch 1')",
                           timeout=120_000)
    page.wait_for_function("() => !document.querySelector('.opt-generate').disabled", timeout=120_000)
    shot(page, f"{name}-5-branches")


@pytest.fixture
def page_of(browser, request):
    """A browser page; on failure its screenshot and text land in test-artifacts/browser/ for diagnosis."""
    pages = []

    def make(width: int, height: int):
        pages.append(browser.new_page(viewport={"width": width, "height": height}))
        return pages[-1]

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for page in pages:
        if failed:
            shot(page, f"FAILED-{request.node.name}")
            (ARTIFACTS / f"FAILED-{request.node.name}.txt").write_text(page.inner_text("body"))
        page.close()


def test_voila_app(page_of, voila):
    page = page_of(1300, 1100)
    page.goto(voila.url, timeout=120_000)
    drive_playground(page, "voila")


def run_all_cells(page) -> None:
    """Run > Run All Cells from the menu, once the kernel is idle; again if nothing started."""
    page.wait_for_selector(".jp-NotebookPanel", timeout=120_000)
    page.wait_for_function("() => /Idle/.test(document.body.innerText)", timeout=180_000)  # kernel started
    for _ in range(2):
        page.click(".lm-MenuBar-itemLabel:text-is('Run')", timeout=30_000)
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')", timeout=30_000)
        try:
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-InputPrompt')].some(p => /\\[(\\*|\\d+)\\]/.test(p.innerText))",
                timeout=60_000)
            return
        except Exception:
            page.keyboard.press("Escape")
    raise AssertionError("JupyterLab did not start running the notebook")


def test_jupyterlab_notebook(page_of, lab):
    page = page_of(1400, 1100)
    page.goto(lab.url, timeout=120_000)
    run_all_cells(page)
    drive_playground(page, "lab")
