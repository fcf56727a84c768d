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
import urllib.error
import urllib.request
from pathlib import Path

import psutil
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
        except urllib.error.HTTPError:
            return  # any HTTP answer: the server is up
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


class Server:
    """A server process in its own process group, bound to 127.0.0.1, stopped with everything it started."""

    def __init__(self, args: list[str], env: dict, log: Path, url: str, cwd: Path, ready_url: str | None = None):
        self.log, self.url = log, url
        self.process = subprocess.Popen(args, env=env, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        wait_http(ready_url or url, self.process, log)

    def kernels(self) -> set[str]:
        """The ids of the kernels this server runs now (from their connection files' names)."""
        ids = set()
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "ipykernel_launcher" in child.cmdline():
                    ids |= {Path(a).stem.removeprefix("kernel-") for a in child.cmdline() if a.endswith(".json")}
            except psutil.Error:
                pass
        return ids

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tiny_models import save_tiny_model

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


CULL_IDLE = 20  # seconds a disconnected kernel may stay idle before Voila's server culls it (120 in `make playground`)


@pytest.fixture(scope="module")
def voila(server_env, models, tmp_path_factory):
    """The app exactly as `make playground` serves it, the model given as a path relative to where make runs."""
    port = free_port()
    log = tmp_path_factory.mktemp("logs") / "voila.log"
    env = {k: v for k, v in server_env.items() if k != "OPT_MODEL"}
    server = Server(["make", "-s", "playground", f"MODEL={os.path.relpath(models['mid'], REPO)}", "HOST=127.0.0.1",
                     f"VOILA_PORT={port}", f"VOILA_CULL_IDLE={CULL_IDLE}"],
                    env, log, f"http://127.0.0.1:{port}/", REPO, ready_url=f"http://127.0.0.1:{port}/voila/static/ready")
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
                           timeout=300_000)  # up to 300 tokens on a CPU shared with other jobs
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


def network_problems(page) -> list[str]:
    """Every request the page makes that fails, is answered with an error, or leaves 127.0.0.1 (offline, the
    app must need nothing from the network). Voila's shutdown beacon, cut off by the unload it reports, is
    not a problem."""
    problems = []

    def failed(request):
        if "/voila/api/shutdown/" not in request.url:
            problems.append(f"failed: {request.url} ({request.failure})")

    page.on("request", lambda r: r.url.startswith(("http://127.0.0.1", "data:", "blob:", "about:"))
            or problems.append(f"off this machine: {r.url}"))
    page.on("requestfailed", failed)
    page.on("response", lambda r: r.status < 400 or problems.append(f"HTTP {r.status}: {r.url}"))
    return problems


def page_kernel(page) -> str:
    return page.evaluate("() => JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId")


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f} s")
        time.sleep(0.5)


def test_voila_shuts_down_the_kernels_of_reloaded_and_closed_pages(page_of, voila):
    """Each page load starts a kernel; a reload shuts the old one down at once (Voila's beforeunload request)
    and a page gone without a word (closed without unload handlers, as a crashed tab) is culled when idle."""
    page = page_of(1280, 1000)
    problems = network_problems(page)
    page.goto(voila.url, timeout=120_000)
    wait_loaded(page)
    loaded = [page_kernel(page)]
    for _ in range(3):
        page.reload(timeout=120_000)
        wait_loaded(page)
        loaded.append(page_kernel(page))
    assert len(set(loaded)) == 4  # four loads, four kernels
    wait_for(lambda: not voila.kernels() & set(loaded[:-1]), 30, "the reloaded pages' kernels were not shut down")
    assert loaded[-1] in voila.kernels()
    assert problems == []

    page.close()  # no beforeunload: only the server's culling can notice
    wait_for(lambda: loaded[-1] not in voila.kernels(), CULL_IDLE + 10 + 60, "the closed page's kernel was not culled")
    assert not voila.kernels() & set(loaded)


LAYOUT = """() => {
  const root = document.querySelector('.opt-playground');
  const box = e => { const b = e.getBoundingClientRect(); return {left: b.left, right: b.right, top: b.top, bottom: b.bottom}; };
  const shown = e => { const b = e.getBoundingClientRect(); return b.width > 0 && b.height > 0; };
  const name = e => [...e.classList].join('.') || e.tagName.toLowerCase();
  const leaves = [...root.querySelectorAll('.widget-label, .widget-readout, .noUi-target, .ui-slider, select, input, '
                                         + 'textarea, button, .lm-TabBar-tab, .p-TabBar-tab')]
    .filter(shown).map(e => ({what: `${name(e.closest('.widget-box > *, .widget-inline-hbox') || e)} ${name(e)}`,
                              text: (e.innerText || e.value || '').slice(0, 30), ...box(e)}));
  const scrolls = e => { for (let a = e.parentElement; a && a !== root; a = a.parentElement)
                           if (['auto', 'scroll'].includes(getComputedStyle(a).overflowX)) return true;
                         return false; };
  const within = [...root.querySelectorAll('*')].filter(shown).filter(e => !scrolls(e))  // scrolled into view: reachable
    .map(e => ({what: name(e), ...box(e)}));
  return {page: document.documentElement.clientWidth, scroll: document.documentElement.scrollWidth, root: box(root),
          leaves, within,
          sliders: [...root.querySelectorAll('.widget-slider')].filter(shown).map(s => ({
            what: s.querySelector('.widget-label').innerText,
            track: (s.querySelector('.noUi-target, .ui-slider') || s).getBoundingClientRect().width})),
          picker: box(root.querySelector('.opt-model select')),
          tables: [...root.querySelectorAll('.opt-history table, .opt-branches table')].filter(shown).map(t => {
            let a = t.parentElement;
            while (a && a !== root && !['auto', 'scroll'].includes(getComputedStyle(a).overflowX)) a = a.parentElement;
            return {...box(t), scroller: a && a !== root ? box(a) : null};
          })};
}"""


def layout_problems(page, width: int) -> list[str]:
    """What a reader at this width would see broken: the page scrolling sideways, anything past the app's
    right edge (a table wider than the app must scroll inside it), a slider reduced to its handle, labels or
    controls on top of each other, a cut picker."""
    m = page.evaluate(LAYOUT)
    root, problems = m["root"], []
    if m["scroll"] > m["page"] or root["right"] > m["page"] + 0.5:
        problems.append(f"the page is wider than the window ({m['scroll']} > {m['page']})")
    problems += [f"{e['what']} sticks out past the right edge ({e['right']:.0f} > {root['right']:.0f})"
                 for e in m["within"] if e["right"] > root["right"] + 0.5]
    problems += [f"a table is cut at the right edge ({t['right']:.0f} > {root['right']:.0f}, no scrolling to it)"
                 for t in m["tables"] if (t["scroller"] or t)["right"] > root["right"] + 0.5]
    problems += [f"slider {s['what']!r} is {s['track']:.0f} px" for s in m["sliders"] if s["track"] < 100]
    if m["picker"]["right"] - m["picker"]["left"] < 200:
        problems.append(f"the model picker is cut to {m['picker']['right'] - m['picker']['left']:.0f} px")
    leaves = m["leaves"]
    for i, a in enumerate(leaves):
        for b in leaves[i + 1:]:
            overlap_x = min(a["right"], b["right"]) - max(a["left"], b["left"])
            overlap_y = min(a["bottom"], b["bottom"]) - max(a["top"], b["top"])
            if overlap_x > 1 and overlap_y > 1:
                problems.append(f"{a['what']} {a['text']!r} overlaps {b['what']} {b['text']!r}")
    return [f"{width} px: {p}" for p in problems]


def test_voila_layout_holds_from_400_px_to_a_wide_screen(page_of, voila):
    """Screenshots at 400, 800 and 1280 px (test-artifacts/browser/voila-width-*.png), each checked on the
    elements' boxes, with a generated run in Output and History; nothing requested off this machine."""
    page = page_of(1280, 1000)
    problems = network_problems(page)
    page.goto(voila.url, timeout=120_000)
    wait_loaded(page)
    page.fill(".opt-prompt textarea", "A phone-sized screen")
    page.click(".opt-generate")
    page.wait_for_function("() => document.querySelector('.opt-status').innerText.includes('finished')", timeout=120_000)
    tab = ".opt-tabs .lm-TabBar-tab:has-text('{}'), .opt-tabs .p-TabBar-tab:has-text('{}')"
    broken = []
    for width in (400, 800, 1280):
        page.set_viewport_size({"width": width, "height": 2400})  # tall: the whole app in each screenshot
        page.click(tab.format("Output", "Output"))
        page.wait_for_timeout(500)  # the reflow
        shot(page, f"voila-width-{width}")
        broken += layout_problems(page, width)
        page.click(tab.format("History", "History"))
        page.wait_for_selector(".opt-history table", timeout=30_000)
        shot(page, f"voila-width-{width}-history")
        broken += layout_problems(page, width)
    assert not broken, "\n".join(broken)
    assert problems == []
