"""The served app (`make playground`, Voila on 127.0.0.1) against a hostile web page: DNS rebinding (a request
naming another host) and cross-site requests (another site's page starting kernels) are refused; the XSRF
exception is Voila's own shutdown request and nothing else; the app's own page still works and still shuts
its kernel down when closed. Plain HTTP where no browser is needed, Chromium where the attack is a page's."""

from __future__ import annotations

import http.server
import json
import os
import re
import threading
import urllib.error
import urllib.request

import pytest
import websocket
from test_browser import CHROMIUM, FLAGS, REPO, Server, free_port, wait_for, wait_loaded

EVIL = "evil.example"
CULL_IDLE = 600  # seconds: no kernel here goes by culling, only by its shutdown request


def serve(base, *make_args: str) -> Server:
    """The app exactly as `make playground` serves it, with a tiny model."""
    from tiny_models import save_tiny_model

    model = save_tiny_model(base / "tiny", "post-ln", seed=4)
    home = base / "home"
    env = {**os.environ, "OPT_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "PYTHONUNBUFFERED": "1"}
    port = free_port()
    server = Server(["make", "-s", "playground", f"MODEL={model}", f"VOILA_PORT={port}",
                     f"VOILA_CULL_IDLE={CULL_IDLE}", *make_args], env, base / "voila.log",
                    f"http://127.0.0.1:{port}/", REPO, ready_url=f"http://127.0.0.1:{port}/voila/static/ready")
    server.port = port
    return server


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    server = serve(tmp_path_factory.mktemp("app-security"), "HOST=127.0.0.1")
    yield server
    server.stop()


def request(app, path: str = "/", *, method: str = "GET", host: str | None = None, **headers) -> tuple[int, str]:
    """(status, body) of one request to the app; `host` replaces the Host header (a rebound name)."""
    req = urllib.request.Request(f"http://127.0.0.1:{app.port}{path}", method=method,
                                 data=b"" if method in ("POST", "DELETE") else None)
    if host:
        req.add_header("Host", host)
    for name, value in headers.items():
        req.add_header(name.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def open_page(app) -> str:
    """Load the page as its user does; the id of the kernel it started."""
    status, body = request(app)
    assert status == 200
    config = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', body, re.S)
    return json.loads(config.group(1))["kernelId"]


def test_a_rebound_host_name_gets_403_and_starts_no_kernel(app):
    before = app.kernels()
    for path in ("/", "/voila/static/ready"):
        status, _ = request(app, path, host=f"{EVIL}:{app.port}")
        assert status == 403, path
    assert app.kernels() == before


def test_a_rebound_host_name_cannot_reach_a_kernel_or_its_websocket(app):
    kernel = open_page(app)
    assert request(app, f"/api/kernels/{kernel}")[0] == 200  # from this machine's name: served
    assert request(app, f"/api/kernels/{kernel}", host=f"{EVIL}:{app.port}")[0] == 403
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"ws://127.0.0.1:{app.port}/api/kernels/{kernel}/channels", timeout=30,
                                    host=f"{EVIL}:{app.port}", origin=f"http://{EVIL}:{app.port}")
    assert refused.value.status_code == 403
    own = websocket.create_connection(f"ws://127.0.0.1:{app.port}/api/kernels/{kernel}/channels", timeout=30,
                                      origin=f"http://127.0.0.1:{app.port}")
    own.close()
    request(app, f"/voila/api/shutdown/{kernel}", method="POST", Origin=f"http://127.0.0.1:{app.port}")


def test_cross_site_requests_start_no_kernel(app):
    before = app.kernels()
    hostile = [{"Origin": f"http://{EVIL}"},  # a script's fetch()
               {"Origin": "null"},  # a sandboxed frame's
               {"Sec_Fetch_Site": "cross-site", "Sec_Fetch_Mode": "navigate", "Sec_Fetch_Dest": "iframe"},
               {"Sec_Fetch_Site": "same-site", "Sec_Fetch_Mode": "no-cors", "Sec_Fetch_Dest": "image"},
               {"Sec_Fetch_Site": "cross-site", "Sec_Fetch_Mode": "navigate", "Sec_Fetch_Dest": "document"}]
    for headers in hostile:
        status, body = request(app, **headers)
        assert status == 403 and "another site" in body, headers
    assert app.kernels() == before
    # a link on another site that the user follows is the user's own request
    status, body = request(app, Sec_Fetch_Site="cross-site", Sec_Fetch_Mode="navigate", Sec_Fetch_Dest="document",
                           Sec_Fetch_User="?1")
    assert status == 200
    kernel = json.loads(re.search(r'id="jupyter-config-data" type="application/json">(.*?)</script>', body,
                                  re.S).group(1))["kernelId"]
    assert kernel in app.kernels()
    request(app, f"/voila/api/shutdown/{kernel}", method="POST", Origin=f"http://127.0.0.1:{app.port}")


def test_the_xsrf_exception_is_voilas_shutdown_only(app):
    kernel = open_page(app)
    own = f"http://127.0.0.1:{app.port}"
    assert request(app, f"/api/kernels/{kernel}", method="DELETE", Origin=own)[0] == 403  # no _xsrf: refused
    assert request(app, f"/voila/api/shutdown/{kernel}", method="POST", Origin=f"http://{EVIL}")[0] == 403
    assert request(app, f"/voila/api/shutdown/{kernel}", method="POST")[0] == 403  # no Origin: not its page
    assert kernel in app.kernels()
    assert request(app, f"/voila/api/shutdown/{kernel}", method="POST", Origin=own)[0] == 204  # its page's beacon
    wait_for(lambda: kernel not in app.kernels(), 30, "the kernel was not shut down")


def test_an_app_exposed_beyond_this_machine_requires_its_token(tmp_path_factory):
    """HOST=0.0.0.0 serves the network: without the token nothing is served and no kernel starts."""
    exposed = serve(tmp_path_factory.mktemp("exposed"), "HOST=0.0.0.0", "PLAYGROUND_TOKEN=let-me-in")
    try:
        for host in (None, f"{EVIL}:{exposed.port}", f"192.0.2.7:{exposed.port}"):
            status, body = request(exposed, host=host)  # redirected to the token's login page
            assert "jupyter-config-data" not in body and "token" in body.lower(), (host, status)
            assert request(exposed, f"/api/kernels/{'0' * 8}-{'0' * 4}-{'0' * 4}-{'0' * 4}-{'0' * 12}",
                           host=host)[0] == 403
        assert exposed.kernels() == set()
        status, body = request(exposed, "/?token=let-me-in")
        assert status == 200 and "jupyter-config-data" in body and len(exposed.kernels()) == 1
    finally:
        exposed.stop()


@pytest.fixture(scope="module")
def chromium():
    """Chromium resolving evil.example to this machine: what a DNS rebinding attack achieves."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=[*FLAGS, f"--host-resolver-rules=MAP {EVIL} 127.0.0.1"])
        yield browser
        browser.close()


@pytest.mark.browser
def test_in_a_browser_a_rebound_name_is_refused_and_the_own_page_works(chromium, app):
    page = chromium.new_page(viewport={"width": 1280, "height": 1000})
    before = app.kernels()
    response = page.goto(f"http://{EVIL}:{app.port}/", timeout=120_000)
    assert response.status == 403 and app.kernels() == before

    page.goto(f"http://127.0.0.1:{app.port}/", timeout=120_000)
    wait_loaded(page)
    kernel = page.evaluate("() => JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId")
    page.fill(".opt-prompt textarea", "Hello")
    page.click(".opt-generate")
    page.wait_for_function("() => document.querySelector('.opt-status').innerText.includes('finished')",
                           timeout=120_000)
    page.goto("about:blank")  # leaving the page: Voila's beforeunload request shuts its kernel down (no culling here)
    wait_for(lambda: kernel not in app.kernels(), 60, "the left page's kernel was not shut down")
    page.close()


@pytest.fixture
def hostile_site(app):
    """Another site's page, at http://evil.example:<port>/ (served here: Chromium resolves the name to this
    machine), that requests the app by script, frame and image as a page a user visits could."""
    target = f"http://127.0.0.1:{app.port}/"
    body = (f"<script>fetch('{target}').catch(() => 0); fetch('{target}', {{mode: 'no-cors'}}).catch(() => 0);"
            f"</script><iframe src='{target}'></iframe><img src='{target}'>").encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{EVIL}:{server.server_address[1]}/", target
    server.shutdown()
    thread.join()


@pytest.mark.browser
def test_in_a_browser_another_sites_page_starts_no_kernel(chromium, app, hostile_site):
    url, target = hostile_site
    page = chromium.new_page()
    before = app.kernels()
    answered = []
    page.on("response", lambda r: r.url == target and answered.append(r.status))
    page.goto(url)
    wait_for(lambda: len(answered) >= 2, 60, "the app did not answer the hostile page's requests")
    page.wait_for_timeout(3000)  # the rest of them
    assert set(answered) == {403}, answered  # they reached the app, which refused them
    assert app.kernels() == before
    page.close()
