"""The playground app: `Playground` runs its jobs (loading, generating, branches, side by side) inside the
requests that ask for them and shows them; its widgets are in `layout`, its state in `state`, its markup in
`views`. Loading goes through `helpers.loading`, generation through `helpers.generation`."""

from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Callable

import ipywidgets as W
import torch

from .. import environment
from ..errors import HelpersError
from ..generation.results import GenerationResult, TokenInfo
from ..generation.settings import PRESETS, GenerationSettings
from ..generation.streaming import stream
from ..loading.model import LoadedModel, load_model
from ..opt.sizes import SIZES
from ..units import human_bytes
from . import side_by_side
from .jobs import Jobs
from .kernel_events import current_request_id, running_kernel
from .layout import build
from .state import (
    Branch,
    Run,
    branch_from,
    free_bytes,
    history_csv,
    history_entry,
    history_json,
    model_choices,
    needs_bytes,
)
from .views import branches_html, clear, history_html, percent, probability_color, text_html, token_tooltip, visible

TOP_ALTERNATIVES = 5


class Playground(Jobs):
    """The app. `Playground(model="opt-350m")` in a notebook cell displays it and loads the model.

    Everything a user can do has a method too (`generate()`, `stop()`, `branch()`, `side_by_side()`,
    `export_history()`), so tests and notebooks can drive it; `wait()` blocks until the current job ends.

    Every job (loading, generating) runs inside the request that asked for it: the constructor's cell,
    or the click's callback. Front ends such as Colab's show only the widget updates sent while that
    request is being handled, so nothing is sent from a background thread. Between decoding steps the
    job handles the widget messages waiting for the kernel (`KernelEvents`), so Stop ends it within one
    step; the kernel's interrupt (SIGINT) ends a generation the same way and a load with a message.
    Outside a kernel every call simply runs to its end.
    """

    def __init__(self, model: str = "opt-350m", extra_models: list[str] | tuple[str, ...] = (),
                 device: str = "auto", dtype: str = "auto", load: bool = True,
                 loader: Callable[..., LoadedModel] = load_model):
        super().__init__()
        self.device, self.dtype, self._loader = device, dtype, loader
        self.choices = model_choices([m for m in extra_models if m != model] + ([] if model in SIZES else [model]))
        self.loaded: LoadedModel | None = None
        self.loaded_name: str | None = None
        self.runs: list[Run] = []
        self.history: list[dict] = []
        self.current: Run | None = None
        self.selected_token: int | None = None
        self._quiet_picker = False
        self._shown_for: str | None = None
        self._applying_preset = False
        self.refresh_seconds = 0.25  # how often streamed text, status and tokens reach the page
        build(self, model)
        if load:
            if running_kernel() is not None:
                self._ipython_display_()  # shown first, so the loading progress is seen in this cell
            self._start(self._load, model)

    # ------------------------------------------------------------------------------------- display

    def _ipython_display_(self, **kwargs) -> None:
        """Show the app; once per cell (the constructor shows it before loading, a trailing `app` does not
        show it twice)."""
        from IPython.display import display

        request = current_request_id()
        if request is not None and request == self._shown_for:
            return
        self._shown_for = request
        display(self.widget)

    # ------------------------------------------------------------------------------------- settings

    def _apply_preset(self, name: str) -> None:
        preset = PRESETS[name]
        self._applying_preset = True
        try:
            for field_name in ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "typical_p",
                               "repetition_penalty", "no_repeat_ngram_size", "num_beams", "penalty_alpha"):
                getattr(self, field_name).value = getattr(preset, field_name)
            self.stop_strings.value = "|".join(s.replace("\n", "\\n") for s in preset.stop)
        finally:
            self._applying_preset = False

    def _on_preset(self, change) -> None:
        if change["new"] != "custom":
            self._apply_preset(change["new"])

    def _on_control_change(self, change) -> None:
        if not self._applying_preset and self.preset.value != "custom":
            self.preset.value = "custom"

    def settings(self) -> GenerationSettings:
        """The decoding settings the controls show (SettingsError if they cannot work together)."""
        stops = tuple(s.replace("\\n", "\n") for s in self.stop_strings.value.split("|") if s)
        return GenerationSettings(
            max_new_tokens=self.max_new_tokens.value, do_sample=self.do_sample.value,
            temperature=self.temperature.value, top_k=self.top_k.value, top_p=self.top_p.value,
            typical_p=self.typical_p.value, repetition_penalty=self.repetition_penalty.value,
            no_repeat_ngram_size=self.no_repeat_ngram_size.value, num_beams=self.num_beams.value,
            penalty_alpha=self.penalty_alpha.value, stop=stops,
            seed=self.seed.value if self.fixed_seed.value else None,
        )

    # ------------------------------------------------------------------------------------- models

    def _on_model_change(self, change) -> None:
        if not self._quiet_picker:
            self._start(self._load, change["new"])

    def _show_picked(self, name: str) -> None:
        """Put the picker back on `name` without loading anything."""
        self._quiet_picker = True
        try:
            self.model_picker.value = name
        finally:
            self._quiet_picker = False

    def _memory_text(self) -> str:
        if torch.cuda.is_available():
            return f"GPU memory {human_bytes(torch.cuda.memory_allocated())}"
        return f"RAM {human_bytes(environment.resident_memory_bytes())}"

    def _load(self, name: str) -> LoadedModel:
        """Load `name` as the playground's model. The working model stays loaded while the new one loads
        when both fit, else it goes first; if the new one fails, the old one is what is left (loaded back
        when it had gone), the picker shows it and the status says what happened."""
        if self.loaded is not None and self.loaded_name == name and self.loaded.model is not None:
            return self.loaded
        self._say("")
        previous, previous_name = self.loaded, self.loaded_name
        if previous is not None and previous.model is None:
            previous = previous_name = None
        if previous is not None and self._needs_bytes(name) > self._budget_bytes():
            previous.unload()
            self.loaded = None
        try:
            new = self._load_one(name)
        except BaseException as exc:
            if previous_name is None:
                self.model_status.value = f"<b>{html.escape(name)}</b> did not load: no model is loaded."
                raise
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            if previous.model is None:  # it made room for the new one: load it back
                self.loaded = self._load_one(previous_name)
                kept = "loaded back"
            else:
                self.loaded = previous
                kept = "still loaded"
            self.loaded_name = previous_name
            self._show_picked(previous_name)
            self.model_status.value = (f"Loading <b>{html.escape(name)}</b> {reason}; <b>{html.escape(previous_name)}"
                                       f"</b> is {kept}: {html.escape(self.loaded.info.summary())}; "
                                       f"{self._memory_text()}")
            raise
        if previous is not None and previous.model is not None:
            previous.unload()
        self.loaded, self.loaded_name = new, name
        self.model_status.value = (f"<b>{html.escape(name)}</b>: {html.escape(new.info.summary())}; "
                                   f"{self._memory_text()}")
        return new

    def _load_one(self, name: str) -> LoadedModel:
        """Call the loader with the progress bar and the status line following it."""
        self.model_status.value = f"Loading <b>{html.escape(name)}</b> \u2026 ({self._memory_text()} before)"
        self.progress.value, self.progress.max = 0, 1
        self.progress.layout.visibility = "visible"
        start = time.perf_counter()

        def report(stage: str, done: int, total: int | None) -> None:
            if total:
                self.progress.max, self.progress.value = total, min(done, total)
            self.model_status.value = (f"Loading <b>{html.escape(name)}</b>: {html.escape(stage)} {done}"
                                       f"{f'/{total}' if total else ''} ({time.perf_counter() - start:.0f} s)")

        try:
            return self._loader(name, device=self.device, dtype=self.dtype, progress=report)
        finally:
            self.progress.layout.visibility = "hidden"

    # ------------------------------------------------------------------------------------- generating

    def _request(self, prompt: str | None) -> tuple[str, GenerationSettings] | None:
        """The prompt and settings to run with, or None after saying what is wrong with them."""
        if self.busy:
            self._say("Already generating: press Stop first.", "warning")
            return None
        text = self.prompt.value if prompt is None else prompt
        if not text.strip():
            self._say("The prompt is empty: type some text for the model to continue.", "error")
            return None
        try:
            settings = self.settings()
        except HelpersError as exc:
            self._say(str(exc), "error")
            return None
        self._say("")
        return text, settings

    def generate(self, prompt: str | None = None) -> bool:
        """Start generating from `prompt` (default: the prompt box). False if a job is already running."""
        request = self._request(prompt)
        return request is not None and self._start(self._generate, *request, None)

    def stop(self) -> None:
        """End the running generation within one decoding step."""
        if self._stream is not None:
            self._stream.stop()

    def _generate(self, prompt, settings: GenerationSettings, branch: Branch | None) -> Run:
        loaded = self._load(self.model_picker.value)
        label = f"run {len(self.runs) + 1}" if branch is None else branch.label
        text_stream = stream(loaded.model, loaded.tokenizer, prompt, settings, top_logprobs=TOP_ALTERNATIVES,
                             on_step=self._pump)
        self._stream = text_stream
        self.stop_button.disabled = False
        run = Run(label=label, model=self.loaded_name, prompt_ids=[], prompt="", tokens=[])
        prefix_tokens = branch.prefix_tokens if branch else []
        if branch:
            branch.start(run)
        shown_prompt = branch.display_prompt + branch.prefix_text if branch else prompt
        self.output.value = text_html(shown_prompt, "")
        self.current, self.selected_token = run, None
        clear(self.alternatives)
        run.tokens = list(prefix_tokens)
        self._show_tokens(run, fresh=True)
        start = shown = time.perf_counter()
        pieces: list[str] = []
        for piece in text_stream:
            pieces.append(piece)
            now = time.perf_counter()
            if now - shown >= self.refresh_seconds:  # a few redraws a second: each one costs the page a render
                shown = now
                self.output.value = text_html(shown_prompt, "".join(pieces))
                run.tokens = prefix_tokens + list(text_stream.tokens)
                self._show_tokens(run)
                n = len(text_stream.token_ids)
                self.status.value = f"{n} tokens \u00b7 {n / (now - start):.1f} tokens/s \u00b7 generating\u2026"
        self.output.value = text_html(shown_prompt, "".join(pieces))
        result = text_stream.result
        run.result, run.tokens = result, prefix_tokens + list(result.tokens or [])
        run.prompt_ids = result.prompt_token_ids[: len(result.prompt_token_ids) - len(prefix_tokens)]
        run.prompt = branch.display_prompt if branch else result.prompt
        run.text = (branch.prefix_text if branch else "") + result.text
        self.runs.append(run)
        self._show_tokens(run)
        self._show_status(result)
        self._record(run)
        self._show_branches()
        return run

    def _show_status(self, result: GenerationResult) -> None:
        t = result.timings
        seed = f" \u00b7 seed {result.settings.seed}" if result.settings.mode in ("sample", "beam-sample") else ""
        first = f"{t.time_to_first_token:.2f} s" if t.time_to_first_token is not None else "n/a"
        self.status.value = (
            f"<b>{t.new_tokens} tokens</b> \u00b7 {t.tokens_per_second:.1f} tokens/s \u00b7 first token {first} \u00b7 "
            f"{t.total_seconds:.2f} s \u00b7 {self._memory_text()} \u00b7 {result.settings.mode}{seed} \u00b7 "
            f"finished: {result.finish_reason}"
        )
        for note in result.notes:
            self._say(note, "warning")

    # ------------------------------------------------------------------------------------- probabilities

    def _token_button(self, run: Run, index: int, token: TokenInfo) -> W.Button:
        color = probability_color(math.exp(token.logprob) if token.logprob is not None else 0.0)
        style = self._token_styles.get(color) or self._token_styles.setdefault(color, W.ButtonStyle(button_color=color))
        button = W.Button(description=visible(token.text), tooltip=token_tooltip(token), layout=self._token_layout,
                          style=style)
        button.add_class("opt-token")
        button.on_click(lambda _, i=index: self.select_token(i))
        return button


    def _probabilities_open(self) -> bool:
        index = self.tabs.selected_index
        return index is not None and self.tabs.children[index] is self._probabilities_page

    def _on_tab(self, change) -> None:
        if self._probabilities_open() and self.current is not None:
            self._show_tokens(self.current)

    def _show_tokens(self, run: Run, fresh: bool = False) -> None:
        """Add buttons for the tokens not shown yet (all of them, after the prompt, for a new run). Only
        while the Probabilities tab is open: opening it draws what it missed."""
        if fresh or self._tokens_run is not run:
            clear(self.tokens_box)
            shown_prompt = run.prompt or self.prompt.value
            self.tokens_box.children = (W.HTML(f'<span style="color:#777">{html.escape(shown_prompt[-200:])}</span>'),)
            self._tokens_run = run
        if not self._probabilities_open():
            return
        have = len(self.tokens_box.children) - 1
        new = [self._token_button(run, i, t) for i, t in enumerate(run.tokens[have:], start=have)]
        if new:
            self.tokens_box.children = self.tokens_box.children + tuple(new)

    def select_token(self, index: int) -> None:
        """Show a token's alternatives, each a button that branches from there."""
        run = self.current
        if run is None or not 0 <= index < len(run.tokens):
            return
        self.selected_token = index
        token = run.tokens[index]
        header = W.HTML(f"Token {index + 1}: <b>{html.escape(repr(token.text))}</b>"
                        + (f" ({percent(token.logprob)})" if token.logprob is not None else "")
                        + ". Continue from here with:")
        buttons = []
        for token_id, text, logprob in token.top:
            b = W.Button(description=f"{visible(text)} {percent(logprob)}", tooltip=f"branch with {text!r}",
                         button_style="info" if token_id == token.id else "",
                         layout=W.Layout(width="auto"))
            b.add_class("opt-alternative")
            b.style.button_color = probability_color(math.exp(logprob))
            b.on_click(lambda _, i=index, t=token_id: self.branch(i, t))
            buttons.append(b)
        clear(self.alternatives)
        self.alternatives.children = (header, W.HBox(buttons, layout=W.Layout(flex_flow="row wrap")))

    def branch(self, index: int, token_id: int) -> bool:
        """Continue the shown run from token `index`, replaced by `token_id`, with the same settings."""
        run = self.current
        if run is None or run.result is None or not 0 <= index < len(run.tokens):
            self._say("Nothing to branch from: generate first, then pick a token.", "error")
            return False
        if self.busy:
            self._say("Already generating: press Stop first.", "warning")
            return False
        label = f"branch {sum(1 for r in self.runs if r.parent) + 1}"
        ids, settings, branch = branch_from(run, index, token_id, self.loaded.tokenizer, label)
        self._say("")
        return self._start(self._generate, ids, settings, branch)

    def _show_branches(self) -> None:
        """Every branch beside the run it came from, the part where they differ in bold."""
        table = branches_html(self.runs)
        if table is not None:
            self.branches_view.value = table

    # ------------------------------------------------------------------------------------- side by side

    def side_by_side(self, models: list[str] | None = None, prompt: str | None = None) -> bool:
        """The same prompt, settings and seed on several models; results in columns with their timings."""
        models = list(models or self.compare_picker.value)
        if len(models) < 2:
            self._say("Pick two or more models to compare (ctrl/cmd-click in the list).", "error")
            return False
        request = self._request(prompt)
        if request is None:
            return False
        text, settings = request
        if settings.seed is None:
            settings = settings.replace(seed=int(time.time()) % 100_000)  # one seed for every column
        return self._start(self._side_by_side, models, text, settings)

    def _needs_bytes(self, name: str) -> int:
        return needs_bytes(self.choices, name, self.device, self.dtype)

    def _budget_bytes(self) -> int:
        return free_bytes(self.device)

    def _side_by_side(self, models: list[str], prompt: str, settings: GenerationSettings) -> None:
        side_by_side.run(self, models, prompt, settings)

    # ------------------------------------------------------------------------------------- history

    def _record(self, run: Run) -> None:
        self.history.append(history_entry(run))
        self.history_view.value = history_html(self.history)

    def history_json(self) -> str:
        return history_json(self.history)

    def history_csv(self) -> str:
        return history_csv(self.history)

    def export_history(self, kind: str = "json") -> str:
        """A download link for the history as JSON or CSV (shown in the History tab); returns the text."""
        text = self.history_json() if kind == "json" else self.history_csv()
        mime = "application/json" if kind == "json" else "text/csv"
        data = base64.b64encode(text.encode()).decode()
        self.export_link.value = (f'<a download="opt-history.{kind}" href="data:{mime};base64,{data}">'
                                  f"Download opt-history.{kind} ({len(self.history)} runs)</a>")
        return text
