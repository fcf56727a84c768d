"""The playground app: `Playground`'s settings, generation, side by side and history, on its mixins' parts."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

from ..errors import HelpersError
from ..generation.results import GenerationResult
from ..generation.settings import PRESETS, GenerationSettings
from ..generation.streaming import stream
from ..loading.model import LoadedModel, load_model
from ..opt.sizes import SIZES
from .jobs import Jobs
from .kernel_events import current_request_id, running_kernel
from .layout import build
from .model_loading import ModelLoading
from .side_by_side import SideBySide
from .state import (
    Branch,
    Run,
    history_csv,
    history_entry,
    history_json,
    model_choices,
)
from .token_view import TOP_ALTERNATIVES, TokenView
from .views import clear, history_html, text_html


class Playground(ModelLoading, TokenView, SideBySide, Jobs):
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
        self._wire()
        if load:
            if running_kernel() is not None:
                self._ipython_display_()  # shown first, so the loading progress is seen in this cell
            self._start(self._load, model)

    def _wire(self) -> None:
        """The controls', picker's and tabs' changes to the app's handlers (layout wires the buttons), then the
        first preset into the controls."""
        self.tabs.observe(self._on_tab, names="selected_index")
        self.model_picker.observe(self._on_model_change, names="value")
        for control in self.decoding_controls:
            control.observe(self._on_control_change, names="value")
        self.preset.observe(self._on_preset, names="value")
        self._apply_preset(self.preset.value)

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
        self.status.value = result.summary(" \u00b7 ") + f" \u00b7 {self._memory_text()}"
        for note in result.notes:
            self._say(note, "warning")

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
        settings = settings.with_seed_drawn()  # one seed for every column
        return self._start(self._side_by_side, models, text, settings)

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
