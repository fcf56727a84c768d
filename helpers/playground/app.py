"""The playground app: `Playground` holds its parts, wires them together, and generates."""

from __future__ import annotations

import time
from collections.abc import Callable

import ipywidgets as W

from ..errors import HelpersError
from ..generation.results import GenerationResult
from ..generation.settings import GenerationSettings
from ..generation.streaming import stream
from ..loading.model import LoadedModel, load_model
from ..opt.sizes import SIZES
from .controls import DecodingControls
from .history import HistoryPanel
from .jobs import Jobs
from .kernel_events import current_request_id, running_kernel
from .layout import arrange, settings_panel, tabs
from .model_loading import ModelLoading
from .side_by_side import SideBySide
from .state import Branch, Run, branch_from, model_choices, with_adapters
from .status_line import StatusLine
from .styles import copy_button, style_widget
from .token_view import TOP_ALTERNATIVES, TokenView
from .views import ROW, explain, text_html

TABS = ["Output", "Probabilities", "Branches", "Side by side", "History"]


def _forward(part: str, name: str) -> property:
    """A handle of one of the app's parts, kept on the app (scripts and tests use `app.<name>`)."""
    return property(lambda self: getattr(getattr(self, part), name), doc=f"The app's `{part}.{name}`.")


class Playground:
    """The app. `Playground(model="opt-350m")` in a notebook cell displays it and loads the model. The LoRA
    adapters under `adapters` (a folder, `finetuned/` by default) join the picker after their base model.

    Everything a user can do has a method too (`generate()`, `stop()`, `branch()`, `side_by_side()`,
    `restore()`, `continue_run()`, `export_history()`), so tests and notebooks can drive it; `wait()` blocks
    until the current job ends.

    Every job (loading, generating) runs inside the request that asked for it: the constructor's cell,
    or the click's callback. Front ends such as Colab's show only the widget updates sent while that
    request is being handled, so nothing is sent from a background thread. Between decoding steps the
    job handles the widget messages waiting for the kernel (`KernelEvents`), so Stop ends it within one
    step; the kernel's interrupt (SIGINT) ends a generation the same way and a load with a message.
    Outside a kernel every call simply runs to its end.
    """

    def __init__(self, model: str = "opt-350m", extra_models: list[str] | tuple[str, ...] = (),
                 device: str = "auto", dtype: str = "auto", load: bool = True,
                 loader: Callable[..., LoadedModel] = load_model, adapters: str | None = "finetuned"):
        self.device, self.dtype = device, dtype
        self.messages = StatusLine()
        self.jobs = Jobs(self.messages, on_busy=self._on_busy, on_stream=self._on_stream)
        choices = with_adapters(model_choices([m for m in extra_models if m != model]
                                              + ([] if model in SIZES else [model])), adapters)
        self.models = ModelLoading(model, choices, device, dtype, loader, self.jobs)
        self.controls = DecodingControls(self.messages.say)
        self.token_view = TokenView(on_branch=self.branch)
        self.history_panel = HistoryPanel(on_restore=self._restore)
        self.compare = SideBySide(self.models, self.jobs, self._record, on_click=self.side_by_side)
        self.runs: list[Run] = []
        self.current: Run | None = None
        self._shown_for: str | None = None
        self._build()
        if load:
            if running_kernel() is not None:
                self._ipython_display_()  # shown first, so the loading progress is seen in this cell
            self.jobs.start(self._load_first, model)

    def _build(self) -> None:
        """The app's own widgets (prompt, buttons, output, tabs) and the page with its parts' widgets."""
        self.prompt = W.Textarea(value="Natural language processing is a subfield of",
                                 placeholder="Type a prompt, then press Generate (Ctrl+Enter)",
                                 layout=W.Layout(width="auto", height="96px"))
        self.prompt.add_class("opt-prompt")
        explain(self.prompt, "The text the model continues. Ctrl+Enter generates, Escape stops.")
        self.prompt_count = W.HTML()
        self.prompt_count.add_class("opt-prompt-count")
        self.generate_button = self._button("Generate", "play", "opt-generate", self.generate, "primary",
                                            "Continue the prompt with the settings on the right (Ctrl+Enter)")
        self.stop_button = self._button("Stop", "stop", "opt-stop", self.stop, "danger",
                                        "End the generation now, keeping what it wrote (Escape)")
        self.stop_button.disabled = True
        self.continue_button = self._button("Continue", "forward", "opt-continue", self.continue_run, "",
                                            "Make the prompt and the text written the new prompt, and generate more")
        self.output = W.HTML(layout=W.Layout(width="100%"))
        self.output.add_class("opt-output")
        self.tabs = tabs([self.output, self.token_view.probabilities_page, self.token_view.branches_view,
                          self.compare.page, self.history_panel.page], TABS)
        self.tabs.observe(lambda change: self.token_view.set_open(change["new"] == 1), names="selected_index")
        self.prompt.observe(lambda _: self._count_prompt(), names="value")
        self.models.picker.observe(lambda change: self.compare.picker.sync(change["new"]), names="options")
        self.controls.max_new_tokens.observe(lambda _: self._count_prompt(), names="value")
        buttons = W.HBox([self.generate_button, self.stop_button, self.continue_button, copy_button()], layout=ROW)
        models = self.models
        self.widget = arrange(
            style_widget(),
            [W.HBox([models.picker, models.plan, models.path, models.progress], layout=ROW), models.status],
            [self.prompt, self.prompt_count, buttons, self.messages.status, self.messages.message, self.tabs],
            [settings_panel(self.controls.panel)])

    @staticmethod
    def _button(text: str, icon: str, css: str, action: Callable[[], object], kind: str, tip: str) -> W.Button:
        button = W.Button(description=text, icon=icon, button_style=kind, tooltip=tip)
        button.add_class(css)
        button.on_click(lambda _: action())
        return button

    def _on_busy(self, busy: bool) -> None:
        self.generate_button.disabled = self.continue_button.disabled = busy
        self.compare.enable(not busy)
        if not busy:
            self.stop_button.disabled = True
            self._count_prompt()

    def _on_stream(self, streaming: bool) -> None:
        self.stop_button.disabled = not streaming

    def _ipython_display_(self, **kwargs) -> None:
        """Show the app; once per cell (the constructor shows it before loading, a trailing `app` does not
        show it twice)."""
        from IPython.display import display

        request = current_request_id()
        if request is not None and request == self._shown_for:
            return
        self._shown_for = request
        display(self.widget)

    # ------------------------------------------------------------------------------------- handles

    model_picker, model_status, progress = (_forward("models", n) for n in ("picker", "status", "progress"))
    loaded, loaded_name, choices = (_forward("models", n) for n in ("loaded", "loaded_name", "choices"))
    plan_picker, loaded_plan = _forward("models", "plan"), _forward("models", "loaded_plan")
    status, message, last_error = (_forward("messages", n) for n in ("status", "message", "last_error"))
    busy, _stream = _forward("jobs", "busy"), _forward("jobs", "stream")
    preset, max_new_tokens, do_sample = (_forward("controls", n) for n in ("preset", "max_new_tokens", "do_sample"))
    temperature, top_k, top_p = (_forward("controls", n) for n in ("temperature", "top_k", "top_p"))
    typical_p, repetition_penalty = _forward("controls", "typical_p"), _forward("controls", "repetition_penalty")
    no_repeat_ngram_size, num_beams = _forward("controls", "no_repeat_ngram_size"), _forward("controls", "num_beams")
    penalty_alpha, seed, fixed_seed = (_forward("controls", n) for n in ("penalty_alpha", "seed", "fixed_seed"))
    stop_strings, decoding_controls = _forward("controls", "stop_strings"), _forward("controls", "controls")
    tokens_box, alternatives = _forward("token_view", "tokens_box"), _forward("token_view", "alternatives")
    probabilities_page, branches_view = _forward("token_view", "probabilities_page"), _forward("token_view", "branches_view")
    selected_token = _forward("token_view", "selected_token")
    compare_picker, compare_button = _forward("compare", "picker"), _forward("compare", "button")
    compare_columns = _forward("compare", "columns")
    history, history_view = _forward("history_panel", "history"), _forward("history_panel", "view")
    export_link = _forward("history_panel", "export_link")

    @property
    def refresh_seconds(self) -> float:
        """How often streamed text, status and tokens reach the page (0: every piece)."""
        return self.jobs.refresh_seconds

    @refresh_seconds.setter
    def refresh_seconds(self, seconds: float) -> None:
        self.jobs.throttle(seconds)

    def settings(self) -> GenerationSettings:
        """The decoding settings the controls show (SettingsError if they cannot work together)."""
        return self.controls.settings()

    def select_token(self, index: int) -> None:
        """Show a token's alternatives (Probabilities), each a button that branches from there."""
        self.token_view.select_token(index)

    def wait(self, timeout: float | None = 120) -> None:
        """Block until the current job ends (only another thread's job can be running while you call this)."""
        self.jobs.wait(timeout)

    # ------------------------------------------------------------------------------------- generating

    def _load_first(self, name: str) -> None:
        self.models.load(name)

    def _request(self, prompt: str | list[int] | None) -> tuple[str | list[int], GenerationSettings] | None:
        """The prompt and settings to run with, or None after saying what is wrong with them."""
        if self.jobs.refused():
            return None
        text = self.prompt.value if prompt is None else prompt
        if isinstance(text, str) and not text.strip():
            self.messages.say("The prompt is empty: type some text for the model to continue.", "error")
            return None
        try:
            settings = self.controls.settings()
        except HelpersError as exc:
            self.messages.say(str(exc), "error")
            return None
        self.messages.say("")
        return text, settings

    def generate(self, prompt: str | None = None) -> bool:
        """Start generating from `prompt` (default: the prompt box). False if a job is already running."""
        request = self._request(prompt)
        return request is not None and self.jobs.start(self._generate, *request, None)

    def stop(self) -> None:
        """End the running generation within one decoding step."""
        self.jobs.stop()

    def continue_run(self) -> bool:
        """The shown run's prompt and text become the prompt, and generation goes on from there."""
        run = self.current
        if run is None or run.result is None:
            self.messages.say("Nothing to continue yet: generate first.", "error")
            return False
        if self.jobs.refused():
            return False
        self.prompt.value = run.prompt + run.text
        return self.generate()

    def _generate(self, prompt, settings: GenerationSettings, branch: Branch | None) -> Run:
        loaded = self.models.load(self.models.picker.value)
        label = f"run {len(self.runs) + 1}" if branch is None else branch.label
        text_stream = stream(loaded.model, loaded.tokenizer, prompt, settings, top_logprobs=TOP_ALTERNATIVES,
                             on_step=self.jobs.pump)
        prefix_tokens = branch.prefix_tokens if branch else []
        shown_prompt = branch.display_prompt + branch.prefix_text if branch else prompt
        run = Run(label=label, model=self.models.loaded_name, prompt_ids=[],
                  prompt=branch.display_prompt if branch else prompt, tokens=list(prefix_tokens))
        if branch:
            branch.start(run)
        self.output.value = text_html(shown_prompt, "")
        self.current = run
        self.token_view.show(run, fresh=True)
        start = time.perf_counter()

        def draw(pieces: list[str], final: bool) -> None:
            self.output.value = text_html(shown_prompt, "".join(pieces))
            if not final:
                run.tokens = prefix_tokens + list(text_stream.tokens)
                self.token_view.show(run)
                n = len(text_stream.token_ids)
                self.messages.show(f"{n} tokens \u00b7 {n / (time.perf_counter() - start):.1f} tokens/s \u00b7 "
                                   "generating\u2026")

        self.jobs.follow(text_stream, draw)
        result = text_stream.result
        run.result, run.tokens = result, prefix_tokens + list(result.tokens or [])
        run.prompt_ids = result.prompt_token_ids[: len(result.prompt_token_ids) - len(prefix_tokens)]
        run.prompt = branch.display_prompt if branch else result.prompt
        run.text = (branch.prefix_text if branch else "") + result.text
        self.runs.append(run)
        self.token_view.show(run)
        self._show_status(result)
        self.controls.show_seed_used(result.settings.seed)
        self._record(run)
        self.token_view.show_branches(self.runs)
        return run

    def _show_status(self, result: GenerationResult) -> None:
        self.messages.show(result.summary(" \u00b7 ") + f" \u00b7 {self.models.memory_text()}")
        for note in result.notes:
            self.messages.say(note, "warning")

    def _count_prompt(self) -> None:
        """The prompt's length in tokens against the model's context, as it is typed."""
        loaded = self.models.loaded
        if loaded is None or loaded.model is None:
            self.prompt_count.value = ""
            return
        n = len(loaded.tokenizer(self.prompt.value, verbose=False).input_ids)
        context = loaded.model.config.max_position_embeddings
        total = n + self.controls.max_new_tokens.value
        color = "var(--jp-error-color1, #b00020)" if total > context else "var(--jp-ui-font-color2, #666)"
        self.prompt_count.value = (f'<small style="color:{color}">prompt: {n} tokens \u00b7 with {total - n} new: '
                                   f"{total} of the {context}-token context</small>")

    def branch(self, index: int, token_id: int) -> bool:
        """Continue the shown run from token `index`, replaced by `token_id`, with the same settings."""
        run = self.current
        if run is None or run.result is None or not 0 <= index < len(run.tokens):
            self.messages.say("Nothing to branch from: generate first, then pick a token.", "error")
            return False
        if self.jobs.refused():
            return False
        label = f"branch {sum(1 for r in self.runs if r.parent) + 1}"
        ids, settings, branch = branch_from(run, index, token_id, self.models.loaded.tokenizer, label)
        self.messages.say("")
        return self.jobs.start(self._generate, ids, settings, branch)

    def side_by_side(self, models: list[str] | None = None, prompt: str | None = None) -> bool:
        """The same prompt, settings and seed on several models; results in columns with their timings."""
        models = list(models or self.compare.picker.value)
        if len(models) < 2:
            self.messages.say("Tick two or more models to compare.", "error")
            return False
        request = self._request(prompt)
        if request is None:
            return False
        text, settings = request
        return self.jobs.start(self.compare.run, models, text, settings.with_seed_drawn())  # one seed for all

    # ------------------------------------------------------------------------------------- history

    def _record(self, run: Run) -> None:
        self.history_panel.record(run)

    def restore(self, index: int = -1) -> bool:
        """Put history run `index` (0 the first, -1 the latest) back: its prompt, settings and seed, its output
        shown, its model picked. False if there is no such run."""
        return self.history_panel.restore(index)

    def _restore(self, entry: dict) -> None:
        if self.jobs.refused():
            return
        self.prompt.value = entry["prompt"]
        self.controls.show(GenerationSettings(**entry["settings"]))
        self.output.value = text_html(entry["prompt"], entry["output"])
        self.tabs.selected_index = 0
        if entry["model"] != self.models.loaded_name and entry["model"] in {c for _, c in self.models.options()}:
            self.models.pick(entry["model"])
        self.messages.say(f"Restored {entry['run']} ({entry['time']}): press Generate to run it again.")

    def history_json(self) -> str:
        return self.history_panel.json()

    def history_csv(self) -> str:
        return self.history_panel.csv()

    def export_history(self, kind: str = "json") -> str:
        """The history as JSON or CSV (the History tab's links download the same text)."""
        return self.history_json() if kind == "json" else self.history_csv()
