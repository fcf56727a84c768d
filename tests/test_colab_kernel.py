"""The playground in a real kernel under Colab's widget rule: an emulated page applies only the widget
messages that arrive while the request that caused them is being handled (between that request's busy
and idle, by parent msg_id), as Colab's front end does (googlecolab/colabtools#3373). Generate and Stop
are pressed with the front end's own comm messages (ipywidgets 7 and 8 send the same ones)."""

from __future__ import annotations

import html
import json
import re
import time

import pytest

pytestmark = pytest.mark.slow


class Page:
    """Widget models as a front end holds them, changed only by in-request messages."""

    def __init__(self):
        self.models: dict[str, dict] = {}
        self.changes: dict[tuple[str, str], list] = {}  # (comm id, trait) -> every value applied
        self.dropped: list[dict] = []

    def apply(self, msg: dict) -> None:
        content = msg["content"]
        comm_id, data = content["comm_id"], content.get("data", {})
        if msg["msg_type"] == "comm_open":
            self.models[comm_id] = dict(data.get("state", {}))
        elif data.get("method") in ("update", "echo_update") and comm_id in self.models:
            self.models[comm_id].update(data["state"])
            for trait, value in data["state"].items():
                self.changes.setdefault((comm_id, trait), []).append(value)

    def find(self, css_class: str) -> str:
        found = [i for i, s in self.models.items() if css_class in s.get("_dom_classes", ())]
        assert len(found) == 1, f"{css_class}: {len(found)} widgets on the page"
        return found[0]

    def value(self, css_class: str) -> str:
        return self.models[self.find(css_class)].get("value", "")

    def text(self, css_class: str) -> str:
        return html.unescape(re.sub(r"<[^>]+>", "", self.value(css_class)))


class FrontEnd:
    """Sends what a browser sends; reads IOPub, keeping each request's busy-idle window."""

    def __init__(self, manager, client):
        self.manager, self.client, self.page = manager, client, Page()
        self.open: set[str] = set()
        self.busy_at: dict[str, float] = {}
        self.idle_at: dict[str, float] = {}
        self.stdout: dict[str, str] = {}
        self.displays: dict[str, int] = {}

    def read(self, until, timeout: float) -> None:
        deadline = time.time() + timeout
        while not until():
            left = deadline - time.time()
            assert left > 0, "timed out waiting for the kernel"
            try:
                msg = self.client.get_iopub_msg(timeout=min(left, 1))
            except Exception:  # queue.Empty
                continue
            parent = msg["parent_header"].get("msg_id")
            kind = msg["msg_type"]
            if kind == "status":
                state = msg["content"]["execution_state"]
                if state == "busy":
                    self.open.add(parent)
                    self.busy_at[parent] = time.time()
                elif state == "idle":
                    self.open.discard(parent)
                    self.idle_at[parent] = time.time()
            elif kind in ("comm_open", "comm_msg", "comm_close"):
                if parent in self.open:
                    self.page.apply(msg)
                else:
                    self.page.dropped.append(msg)
            elif kind == "stream":
                self.stdout[parent] = self.stdout.get(parent, "") + msg["content"]["text"]
            elif kind == "display_data":
                self.displays[parent] = self.displays.get(parent, 0) + 1

    def done(self, msg_id: str, timeout: float = 120) -> None:
        self.read(lambda: msg_id in self.idle_at, timeout)

    def run(self, code: str, timeout: float = 120) -> str:
        msg_id = self.client.execute(code)
        self.done(msg_id, timeout)
        return msg_id

    def comm(self, comm_id: str, data: dict) -> str:
        msg = self.client.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.client.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def set(self, css_class: str, **state) -> None:
        self.done(self.comm(self.page.find(css_class), {"method": "update", "state": state, "buffer_paths": []}))

    def click(self, css_class: str) -> str:
        return self.comm(self.page.find(css_class), {"method": "custom", "content": {"event": "click"}})

    def history(self) -> list[dict]:
        return json.loads(self.stdout[self.run("print(app.history_json())")])


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    from jupyter_client.manager import start_new_kernel
    from tiny_models import save_tiny_model

    base = tmp_path_factory.mktemp("colab")
    folder = save_tiny_model(base / "mid", "pre-ln", seed=3, hidden_size=512, ffn_dim=2048, num_hidden_layers=6,
                             word_embed_proj_dim=512)
    tiny = save_tiny_model(base / "tiny", "post-ln", seed=4)
    manager, client = start_new_kernel(kernel_name="python3")
    fe = FrontEnd(manager, client)
    fe.folders = [str(folder), str(tiny)]
    fe.cell = fe.run(f"from helpers.playground.app import Playground\napp = Playground(model={str(folder)!r}, "
                     f"extra_models=[{str(tiny)!r}], device='cpu')\napp", timeout=180)
    yield fe
    client.stop_channels()
    manager.shutdown_kernel(now=True)


def generating(fe: FrontEnd, at_least: int):
    def seen() -> bool:
        status = fe.page.text("opt-status")
        return "generating" in status and int(status.split(" tokens")[0]) >= at_least
    return seen


def test_the_first_cell_shows_the_app_once_and_its_loading(front):
    page = front.page
    assert front.displays[front.cell] == 1  # shown by the constructor, not again by the trailing `app`
    status = page.models[page.find("opt-model-status")]["value"]
    assert "loaded in" in status and "mid" in status
    loading = page.changes[(page.find("opt-model-status"), "value")]
    assert any("Loading" in v for v in loading)  # the progress reached the page while the cell ran


def test_generate_streams_onto_the_page_within_its_click(front):
    front.set("opt-prompt", value="Natural language processing is")
    labels = front.page.models[front.page.find("opt-preset")]["_options_labels"]
    front.set("opt-preset", index=labels.index("the tutorial's greedy"))  # a Dropdown syncs its index
    front.set("opt-max-new-tokens", value=64)
    click = front.click("opt-generate")
    front.done(click)
    run = front.history()[-1]
    assert run["finish_reason"] == "length" and run["new_tokens"] == 64
    assert front.page.text("opt-output") == run["prompt"] + run["output"]
    drawn = front.page.changes[(front.page.find("opt-output"), "value")]
    assert len(set(drawn)) >= 3, "the text arrived at once, not streamed"
    assert "finished: length" in front.page.text("opt-status")
    assert not front.page.dropped, [m["content"] for m in front.page.dropped[:3]]


def test_stop_ends_the_run_while_its_click_is_handled_and_generate_works_again(front):
    front.set("opt-max-new-tokens", value=512)
    generate = front.click("opt-generate")
    front.read(generating(front, 3), 60)
    stop = front.click("opt-stop")
    pressed = time.time()
    front.done(generate, 30)
    assert front.idle_at[generate] - pressed < 3  # honoured within a step, not after 512 tokens
    assert front.busy_at[stop] < front.idle_at[stop] <= front.idle_at[generate]  # handled inside the click
    assert "finished: stopped" in front.page.text("opt-status")
    assert front.history()[-1]["finish_reason"] == "stopped"
    front.set("opt-max-new-tokens", value=8)
    again = front.click("opt-generate")
    front.done(again)
    assert "finished: length" in front.page.text("opt-status") and front.history()[-1]["new_tokens"] == 8
    assert not front.page.dropped


def test_the_kernel_interrupt_ends_a_generation_and_the_app_still_works(front):
    front.set("opt-max-new-tokens", value=512)
    generate = front.click("opt-generate")
    front.read(generating(front, 3), 60)
    front.manager.interrupt_kernel()
    interrupted = time.time()
    front.done(generate, 30)
    assert front.idle_at[generate] - interrupted < 3
    assert "finished: stopped" in front.page.text("opt-status") and "Interrupted" in front.page.text("opt-message")
    assert front.history()[-1]["finish_reason"] == "stopped"
    front.set("opt-max-new-tokens", value=8)
    front.done(front.click("opt-generate"))
    assert "finished: length" in front.page.text("opt-status")
    reply_to = front.client.execute("assert app.loaded.model is not None and not app.busy")
    while (reply := front.client.get_shell_msg(timeout=60))["parent_header"].get("msg_id") != reply_to:
        pass
    assert reply["content"]["status"] == "ok"
    assert not front.page.dropped


def test_probabilities_branches_side_by_side_and_history_reach_the_page(front):
    page = front.page
    front.set("opt-max-new-tokens", value=8)
    front.done(front.click("opt-generate"))
    tabs = page.find("opt-tabs")
    front.done(front.comm(tabs, {"method": "update", "state": {"selected_index": 1}, "buffer_paths": []}))
    children = page.models[page.find("opt-tokens")]["children"]
    tokens = [page.models[c.removeprefix("IPY_MODEL_")] for c in children[1:]]
    assert len(tokens) == 8 and all("%" in t["tooltip"] for t in tokens)
    token = children[3].removeprefix("IPY_MODEL_")
    front.done(front.comm(token, {"method": "custom", "content": {"event": "click"}}))
    alternatives = [i for i, s in page.models.items() if "opt-alternative" in s.get("_dom_classes", ())
                    and not s.get("button_style")]  # the chosen token's own button is styled "info"
    assert alternatives
    front.done(front.comm(alternatives[0], {"method": "custom", "content": {"event": "click"}}))
    assert "branch 1" in page.value("opt-branches") and "branch 1" in page.value("opt-history")
    for folder in front.folders:  # tick each model's checkbox, as a plain click does
        box = next(i for i, s in page.models.items() if "opt-compare-choice" in s.get("_dom_classes", ())
                   and s.get("description") == folder)
        front.done(front.comm(box, {"method": "update", "state": {"value": True}, "buffer_paths": []}))
    front.done(front.click("opt-compare"), 300)
    columns = [page.models[c.removeprefix("IPY_MODEL_")] for c in page.models[page.find("opt-columns")]["children"]]
    assert len(columns) == 2
    for column in columns:
        header = page.models[column["children"][0].removeprefix("IPY_MODEL_")]["value"]
        assert "tokens/s" in header
    assert page.value("opt-history").count("side by side") == 2
    assert not page.dropped


def test_cells_sent_during_a_run_wait_for_it_and_run_in_their_order(front):
    front.set("opt-max-new-tokens", value=512)
    generate = front.click("opt-generate")
    front.read(generating(front, 3), 60)
    first = front.client.execute("order = ['first']")
    second = front.client.execute("order.append('second'); print(order, app.busy)")
    front.done(front.click("opt-stop"), 30)
    front.done(generate, 30)
    front.done(second, 60)
    assert front.idle_at[generate] <= front.busy_at[first] <= front.busy_at[second]  # queued, not run inside
    assert front.stdout[second].strip() == "['first', 'second'] False"
    assert "finished: stopped" in front.page.text("opt-status")


def test_the_kernel_interrupt_during_the_first_load_ends_the_cell_with_a_message(front):
    code = ("import time\n"
            "def slow(name, **options):\n    time.sleep(120)\n"
            f"other = Playground(model={front.folders[1]!r}, device='cpu', loader=slow)\n"
            "print(other.loaded is None, 'Interrupted' in other.message.value, not other.busy)")
    cell = front.client.execute(code)
    loading = f"Loading <b>{html.escape(front.folders[1])}"
    front.read(lambda: any(loading in str(m.get("value")) for m in front.page.models.values()), 60)
    time.sleep(0.5)  # the status is set just before the loader is called
    front.manager.interrupt_kernel()
    interrupted = time.time()
    front.done(cell, 30)
    assert front.idle_at[cell] - interrupted < 5 and front.stdout[cell].strip() == "True True True"
    assert not front.page.dropped
