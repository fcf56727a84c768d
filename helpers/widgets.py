"""The playground: an ipywidgets app to tweak prompts and decoding settings, with streaming, Stop, token
probabilities, branches, side-by-side sizes and a history. It only renders: loading goes through
`helpers.loading`, generation through `helpers.generation`."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import ipywidgets as W
import torch

from . import environment
from .errors import HelpersError
from .generation import GenerationResult, GenerationSettings, TokenInfo, stream
from .kernel_events import KernelEvents, current_request_id, running_kernel
from .loading import LoadedModel, load_model
from .models import SIZES, human_bytes
from .settings import PRESETS

TOP_ALTERNATIVES = 5
WIDE = W.Layout(width="100%")
LABELS = {"description_width": "130px"}
# Controls flow to as many columns of at least 340 px as fit (one on a phone, two from about 800 px).
COLUMNS = "repeat(auto-fit, minmax(min(100%, max(340px, 45%)), 1fr))"
ROW = W.Layout(flex_flow="row wrap", align_items="center")  # a row that wraps instead of squeezing
# Tables (history, branches) fill the width, cells break long paths and text; below ~450 px they scroll.
TABLE = ("<style>.opt-table{width:100%;border-collapse:collapse} .opt-table td{overflow-wrap:anywhere} "
         ".opt-table th,.opt-table td{padding:2px 4px}</style><table class='opt-table'>")


def probability_color(p: float) -> str:
    """Token shading: red for unlikely, through yellow, to green for likely."""
    return f"hsl({round(120 * max(0.0, min(1.0, p)))}, 75%, 82%)"


def _visible(text: str) -> str:
    """Token text as a button label: spaces and newlines shown, never collapsed to nothing."""
    return text.replace(" ", "\u00a0").replace("\n", "\u21b5") or "\u2205"


def _percent(logprob: float) -> str:
    return f"{100 * math.exp(logprob):.1f}%"


def titled(container: W.Box, titles: list[str]) -> W.Box:
    """Name a Tab's or an Accordion's pages: `set_title` is what ipywidgets 7 and 8 both have."""
    for index, title in enumerate(titles):
        container.set_title(index, title)
    return container


def _text_html(prompt: str, generated: str) -> str:
    """The Output tab's markup: the prompt in grey, then what the model wrote."""
    return (f'<div style="white-space:pre-wrap;font-family:monospace"><span style="color:#777">'
            f"{html.escape(prompt)}</span>{html.escape(generated)}</div>")


@dataclass
class Run:
    """One generation shown in the playground (a plain run, a branch or a side-by-side column)."""

    label: str
    model: str
    prompt_ids: list[int]
    prompt: str
    tokens: list[TokenInfo]
    result: GenerationResult | None = None
    parent: str | None = None
    branched_at: int | None = None  # index of the replaced token in the parent's tokens
    replaced: tuple[str, str] | None = None  # (parent's token, chosen alternative)
    text: str = ""

    @property
    def mean_logprob(self) -> float | None:
        values = [t.logprob for t in self.tokens if t.logprob is not None]
        return sum(values) / len(values) if values else None


@dataclass
class Model:
    """A choice in the model picker."""

    name: str
    label: str
    fits: bool | None  # None: unknown (a folder or hub id)
    needs_bytes: int | None = None


def model_choices(extra: list[str], env: environment.Environment | None = None) -> list[Model]:
    """The OPT sizes, each labelled with the memory plan it would load with here (or marked when none
    fits this machine), then `extra` (folders, hub ids)."""
    from .planner import Budget, plan

    budget = Budget.of_machine(env or environment.detect())
    out = []
    for size in SIZES.values():
        options = plan(size, budget)
        best = next((o for o in options if o.usable), None)
        if best is None:
            smallest = min(options, key=lambda o: o.gpu_bytes + o.cpu_bytes)
            needs = smallest.gpu_bytes + smallest.cpu_bytes
            out.append(Model(size.name, f"{size.name} \u26a0 too big here (needs {human_bytes(needs)})", False,
                             smallest.needs_bytes))
            continue
        if best.method == "disk-offload":
            out.append(Model(size.name, f"{size.name} \u26a0 only from disk here ({best.speed_class})", False,
                             best.needs_bytes))
            continue
        plain = best.method in ("fp16", "fp32-cpu")
        label = size.name if plain else f"{size.name} \u00b7 {best.method} ({best.speed_class})"
        out.append(Model(size.name, label, True, best.needs_bytes))
    out += [Model(name, name, None) for name in extra]
    return out


class Playground:
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
        self.device, self.dtype, self._loader = device, dtype, loader
        self.choices = model_choices([m for m in extra_models if m != model] + ([] if model in SIZES else [model]))
        self.loaded: LoadedModel | None = None
        self.loaded_name: str | None = None
        self.runs: list[Run] = []
        self.history: list[dict] = []
        self.current: Run | None = None
        self.selected_token: int | None = None
        self.last_error: str | None = None
        self._stream = None
        self._job: str | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._events: KernelEvents | None = None
        self._interrupted = False
        self._quiet_picker = False
        self._shown_for: str | None = None
        self._applying_preset = False
        self.refresh_seconds = 0.25  # how often streamed text, status and tokens reach the page
        self._build(model)
        if load:
            if running_kernel() is not None:
                self._ipython_display_()  # shown first, so the loading progress is seen in this cell
            self._start(self._load, model)

    # ------------------------------------------------------------------------------------- layout

    def _build(self, model: str) -> None:
        options = [(c.label, c.name) for c in self.choices]
        self.model_picker = W.Dropdown(options=options, value=model, description="Model", style=LABELS,
                                       layout=W.Layout(width="auto", flex="1 1 340px", max_width="760px"))
        self.model_picker.add_class("opt-model")
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="auto", flex="0 1 240px", visibility="hidden"))
        self.model_status = W.HTML()
        self.model_status.add_class("opt-model-status")
        self.prompt = W.Textarea(value="Natural language processing is a subfield of",
                                 placeholder="Type a prompt, then press Generate", layout=W.Layout(width="auto", height="90px"))
        self.prompt.add_class("opt-prompt")
        self.preset = W.Dropdown(options=["custom", *PRESETS], value="balanced sampling", description="Preset",
                                 style=LABELS)
        self.preset.add_class("opt-preset")
        slider = dict(continuous_update=False, style=LABELS, layout=W.Layout(width="auto"))
        self.max_new_tokens = W.IntSlider(64, 1, 512, description="max new tokens", **slider)
        self.do_sample = W.Checkbox(True, description="sample (off: greedy)", indent=False, layout=W.Layout(width="auto"))
        self.temperature = W.FloatSlider(0.7, min=0.05, max=2.0, step=0.05, description="temperature", **slider)
        self.top_k = W.IntSlider(0, 0, 200, description="top-k (0: off)", **slider)
        self.top_p = W.FloatSlider(0.9, min=0.05, max=1.0, step=0.01, description="top-p", **slider)
        self.typical_p = W.FloatSlider(1.0, min=0.05, max=1.0, step=0.01, description="typical-p", **slider)
        self.repetition_penalty = W.FloatSlider(1.0, min=0.5, max=2.0, step=0.05, description="repetition penalty", **slider)
        self.no_repeat_ngram_size = W.IntSlider(0, 0, 10, description="no-repeat n-gram", **slider)
        self.num_beams = W.IntSlider(1, 1, 8, description="beams", **slider)
        self.penalty_alpha = W.FloatSlider(0.0, min=0.0, max=1.0, step=0.05, description="contrastive \u03b1", **slider)
        self.seed = W.IntText(0, description="seed", style=LABELS, layout=W.Layout(width="auto", flex="0 1 240px"))
        self.fixed_seed = W.Checkbox(False, description="fixed seed", indent=False, layout=W.Layout(width="auto"))
        self.stop_strings = W.Text("", description="stop strings", placeholder="separate with | ; \\n is a newline",
                                   style=LABELS, layout=W.Layout(width="auto"))
        self.max_new_tokens.add_class("opt-max-new-tokens")
        self.temperature.add_class("opt-temperature")
        self._controls = [self.max_new_tokens, self.do_sample, self.temperature, self.top_k, self.top_p,
                          self.typical_p, self.repetition_penalty, self.no_repeat_ngram_size, self.num_beams,
                          self.penalty_alpha, self.seed, self.fixed_seed, self.stop_strings]
        for control in self._controls:
            control.observe(self._on_control_change, names="value")
        self.preset.observe(self._on_preset, names="value")
        self._apply_preset("balanced sampling")

        self.generate_button = W.Button(description="Generate", button_style="primary", icon="play")
        self.generate_button.add_class("opt-generate")
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.stop_button.add_class("opt-stop")
        self.generate_button.on_click(lambda _: self.generate())
        self.stop_button.on_click(lambda _: self.stop())
        self.model_picker.observe(self._on_model_change, names="value")

        self.status = W.HTML()
        self.status.add_class("opt-status")
        self.message = W.HTML()
        self.message.add_class("opt-message")
        self.output = W.HTML(layout=W.Layout(border="1px solid #ddd", padding="6px", min_height="80px"))
        self.output.add_class("opt-output")

        self.tokens_box = W.Box(layout=W.Layout(display="flex", flex_flow="row wrap", align_items="center"))
        self.tokens_box.add_class("opt-tokens")
        self._token_layout = W.Layout(width="auto", height="26px", margin="1px", padding="0 3px")  # one for all
        self._token_styles: dict[str, W.ButtonStyle] = {}  # one per shade, shared by the tokens of that shade
        self._tokens_run: Run | None = None  # the run whose tokens the box shows
        self.alternatives = W.VBox()
        self.alternatives.add_class("opt-alternatives")
        probabilities = W.VBox([
            W.HTML("<small>Each generated token is shaded by its probability under the model (red: unlikely, green: "
                   "likely). Hover for its top-5 alternatives; click a token to see them and continue from any "
                   "alternative (a branch).</small>"),
            self.tokens_box, self.alternatives])
        self._probabilities_page = probabilities

        self.branches_view = W.HTML("<i>No branches yet: click a token in Probabilities and pick an alternative.</i>",
                                    layout=W.Layout(overflow="auto"))
        self.branches_view.add_class("opt-branches")

        self.compare_picker = W.SelectMultiple(options=options, rows=min(8, len(options)), description="Models",
                                               style=LABELS)
        self.compare_button = W.Button(description="Run side by side", icon="columns")
        self.compare_button.add_class("opt-compare")
        self.compare_button.on_click(lambda _: self.side_by_side())
        self.compare_columns = W.HBox(layout=W.Layout(align_items="flex-start", overflow="auto"))
        self.compare_columns.add_class("opt-columns")
        side = W.VBox([W.HTML("<small>The same prompt, settings and seed on several sizes, loaded one at a time "
                              "when memory demands.</small>"),
                       W.HBox([self.compare_picker, self.compare_button], layout=ROW), self.compare_columns])

        self.history_view = W.HTML("<i>No runs yet.</i>", layout=W.Layout(overflow="auto"))
        self.history_view.add_class("opt-history")
        self.export_json = W.Button(description="Export JSON", icon="download")
        self.export_csv = W.Button(description="Export CSV", icon="download")
        self.export_json.on_click(lambda _: self.export_history("json"))
        self.export_csv.on_click(lambda _: self.export_history("csv"))
        self.export_link = W.HTML()
        self.export_link.add_class("opt-export")
        history = W.VBox([W.HBox([self.export_json, self.export_csv, self.export_link], layout=ROW), self.history_view])

        self.tabs = titled(W.Tab(children=[self.output, probabilities, self.branches_view, side, history]),
                           ["Output", "Probabilities", "Branches", "Side by side", "History"])
        self.tabs.add_class("opt-tabs")
        self.tabs.observe(self._on_tab, names="selected_index")
        grid = W.GridBox([self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.typical_p,
                          self.repetition_penalty, self.no_repeat_ngram_size, self.num_beams, self.penalty_alpha,
                          W.HBox([self.seed, self.fixed_seed], layout=ROW)],
                         layout=W.Layout(grid_template_columns=COLUMNS))
        settings = titled(W.Accordion(children=[W.VBox([W.HBox([self.preset, self.do_sample], layout=ROW), grid,
                                                        self.stop_strings])]), ["Decoding settings"])
        settings.selected_index = 0
        self.widget = W.VBox([
            W.HBox([self.model_picker, self.progress], layout=ROW), self.model_status, self.prompt, settings,
            W.HBox([self.generate_button, self.stop_button]), self.status, self.message, self.tabs,
        ], layout=W.Layout(width="100%"))
        self.widget.add_class("opt-playground")

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

    # ------------------------------------------------------------------------------------- jobs

    @property
    def busy(self) -> bool:
        return self._job is not None

    def _start(self, target: Callable, *args) -> bool:
        """Run a job now, inside the request that asked for it; one at a time (a click that arrives while
        one runs is told so). False if it could not start."""
        if self.busy:
            self._say("Busy with the current job: press Stop, or wait for it to finish.", "warning")
            return False
        self._job, self._interrupted = target.__name__, False
        self._idle.clear()
        self._events = KernelEvents()
        self.generate_button.disabled = self.compare_button.disabled = True
        try:
            with self._interrupts():
                self._guarded(target, *args)
        finally:
            self._job, self._events = None, None
            self._idle.set()
        return True

    @contextmanager
    def _interrupts(self):
        """In a kernel, the interrupt (SIGINT) stops a generation at its next step like Stop, and raises
        KeyboardInterrupt anywhere else (a load)."""
        if self._events is None or not self._events.supported:
            yield
            return

        def on_sigint(signum, frame):
            self._interrupted = True
            if self._stream is None:
                raise KeyboardInterrupt
            self._stream.stop()

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _pump(self) -> None:
        """Handle the widget messages waiting for the kernel (a Stop click) while a job runs."""
        if self._events is not None:
            self._events.pump()

    def _guarded(self, target: Callable, *args) -> None:
        """Any failure becomes a message in the widget, which stays usable."""
        try:
            target(*args)
            if self._interrupted:
                self._say("Interrupted: the generation stopped there (the kernel's interrupt works like Stop).",
                          "warning")
        except KeyboardInterrupt:
            self._say("Interrupted: nothing is running now; the app is ready.", "warning")
            if self._events is None or not self._events.supported:
                raise  # plain Python: Ctrl-C ends the program as usual, after the cleanup below
        except HelpersError as exc:
            self._say(str(exc), "error")
        except torch.cuda.OutOfMemoryError:
            self._say("The GPU ran out of memory. Pick a smaller model, fewer new tokens or fewer beams "
                      "(`python -m helpers plan` shows what fits).", "error")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception as exc:  # a bug or a library failure: say it, keep the app alive
            self._say(f"Something failed: {type(exc).__name__}: {exc}", "error")
        finally:
            self._stream = None
            self.generate_button.disabled = self.compare_button.disabled = False
            self.stop_button.disabled = True
            self.progress.layout.visibility = "hidden"

    def wait(self, timeout: float | None = 120) -> None:
        """Block until the current job (loading, generating) ends. Jobs run in the call that starts them,
        so this only waits when another thread started one."""
        self._idle.wait(timeout)

    def _say(self, text: str, kind: str = "info") -> None:
        self.last_error = text if kind == "error" else None
        colors = {"error": "#b00020", "warning": "#8a6d00", "info": "#555"}
        self.message.value = f'<div style="color:{colors[kind]}">{html.escape(text)}</div>' if text else ""

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

    def _generate(self, prompt, settings: GenerationSettings, branch: dict | None) -> Run:
        loaded = self._load(self.model_picker.value)
        label = f"run {len(self.runs) + 1}" if branch is None else branch["label"]
        text_stream = stream(loaded.model, loaded.tokenizer, prompt, settings, top_logprobs=TOP_ALTERNATIVES,
                             on_step=self._pump)
        self._stream = text_stream
        self.stop_button.disabled = False
        run = Run(label=label, model=self.loaded_name, prompt_ids=[], prompt="", tokens=[])
        prefix_tokens = branch["prefix_tokens"] if branch else []
        if branch:
            run.parent, run.branched_at, run.replaced = branch["parent"], branch["at"], branch["replaced"]
        shown_prompt = branch["display_prompt"] + branch["prefix_text"] if branch else prompt
        self.output.value = _text_html(shown_prompt, "")
        self.current, self.selected_token = run, None
        self._clear(self.alternatives)
        run.tokens = list(prefix_tokens)
        self._show_tokens(run, fresh=True)
        start = shown = time.perf_counter()
        pieces: list[str] = []
        for piece in text_stream:
            pieces.append(piece)
            now = time.perf_counter()
            if now - shown >= self.refresh_seconds:  # a few redraws a second: each one costs the page a render
                shown = now
                self.output.value = _text_html(shown_prompt, "".join(pieces))
                run.tokens = prefix_tokens + list(text_stream.tokens)
                self._show_tokens(run)
                n = len(text_stream.token_ids)
                self.status.value = f"{n} tokens \u00b7 {n / (now - start):.1f} tokens/s \u00b7 generating\u2026"
        self.output.value = _text_html(shown_prompt, "".join(pieces))
        result = text_stream.result
        run.result, run.tokens = result, prefix_tokens + list(result.tokens or [])
        run.prompt_ids = result.prompt_token_ids[: len(result.prompt_token_ids) - len(prefix_tokens)]
        run.prompt = branch["display_prompt"] if branch else result.prompt
        run.text = (branch["prefix_text"] if branch else "") + result.text
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
        p = math.exp(token.logprob) if token.logprob is not None else 0.0
        lines = [f"{_percent(token.logprob)} for {token.text!r}" if token.logprob is not None else repr(token.text)]
        lines += [f"{i + 1}. {text!r} {_percent(lp)}" for i, (_, text, lp) in enumerate(token.top)]
        color = probability_color(p)
        style = self._token_styles.get(color) or self._token_styles.setdefault(color, W.ButtonStyle(button_color=color))
        button = W.Button(description=_visible(token.text), tooltip="\n".join(lines), layout=self._token_layout,
                          style=style)
        button.add_class("opt-token")
        button.on_click(lambda _, i=index: self.select_token(i))
        return button

    @staticmethod
    def _clear(box: W.Box) -> None:
        """Empty a box and close its widgets (each open widget holds a channel to the browser)."""
        old, box.children = box.children, ()
        stack = list(old)
        while stack:
            widget = stack.pop()
            stack.extend(getattr(widget, "children", ()))
            widget.close()

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
            self._clear(self.tokens_box)
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
                        + (f" ({_percent(token.logprob)})" if token.logprob is not None else "")
                        + ". Continue from here with:")
        buttons = []
        for token_id, text, logprob in token.top:
            b = W.Button(description=f"{_visible(text)} {_percent(logprob)}", tooltip=f"branch with {text!r}",
                         button_style="info" if token_id == token.id else "",
                         layout=W.Layout(width="auto"))
            b.add_class("opt-alternative")
            b.style.button_color = probability_color(math.exp(logprob))
            b.on_click(lambda _, i=index, t=token_id: self.branch(i, t))
            buttons.append(b)
        self._clear(self.alternatives)
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
        loaded = self.loaded
        original = run.tokens[index]
        chosen = next((t for t in original.top if t[0] == token_id), None)
        chosen_info = TokenInfo(token_id, chosen[1] if chosen else loaded.tokenizer.decode([token_id]),
                                chosen[2] if chosen else None, list(original.top))
        prefix = run.tokens[:index] + [chosen_info]
        ids = run.prompt_ids + [t.id for t in prefix]
        settings = run.result.settings
        remaining = max(1, settings.max_new_tokens - len(prefix))
        branch = {
            "label": f"branch {sum(1 for r in self.runs if r.parent) + 1}", "parent": run.label, "at": index,
            "replaced": (original.text, chosen_info.text), "prefix_tokens": prefix, "display_prompt": run.prompt,
            "prefix_text": loaded.tokenizer.decode([t.id for t in prefix], skip_special_tokens=True,
                                                   clean_up_tokenization_spaces=False),
        }
        self._say("")
        return self._start(self._generate, ids, settings.replace(max_new_tokens=remaining), branch)

    def _show_branches(self) -> None:
        """Every branch beside the run it came from, the part where they differ in bold."""
        by_label = {r.label: r for r in self.runs}
        parents = {r.parent for r in self.runs if r.parent}
        shown = [r for r in self.runs if r.parent or r.label in parents]
        if not parents:
            return
        rows = []
        for run in shown:
            parent = by_label.get(run.parent) if run.parent else None
            common = 0
            if parent is not None:
                while common < min(len(run.text), len(parent.text)) and run.text[common] == parent.text[common]:
                    common += 1
            where = (f"token {run.branched_at + 1}: {html.escape(repr(run.replaced[0]))} \u2192 "
                     f"{html.escape(repr(run.replaced[1]))}" if run.replaced else "\u2014")
            mean = run.mean_logprob
            rows.append(
                f"<tr><td>{html.escape(run.label)}</td><td>{html.escape(run.parent or '')}</td><td>{where}</td>"
                f'<td><span style="color:#777">{html.escape(run.text[:common])}</span>'
                f"<b>{html.escape(run.text[common:])}</b></td>"
                f"<td>{'' if mean is None else f'{mean:.2f}'}</td></tr>"
            )
        self.branches_view.value = (
            f"{TABLE}<tr><th>run</th><th>from</th><th>branched at</th><th>text (where it differs in bold)</th>"
            "<th>mean log-prob</th></tr>" + "".join(rows) + "</table>"
        )

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
        """What `name` takes loaded as this playground loads it: the planner's figure for its plan."""
        from .loading import resolve_device, size_of
        from .models import dtype_name, resolve_dtype
        from .planner import Budget, plain_method, plan

        choice = next((c for c in self.choices if c.name == name), None)
        if choice is not None and choice.needs_bytes is not None:
            return choice.needs_bytes
        try:
            size = size_of(name)
        except HelpersError:
            return 0  # loading it will say what is wrong
        device = resolve_device(self.device)
        method = plain_method(device, dtype_name(resolve_dtype(self.dtype, device)))
        options = plan(size, Budget.of_machine())
        named = next((o for o in options if o.method == method), None)
        return (named or next((o for o in options if o.usable), options[0])).needs_bytes

    def _budget_bytes(self) -> int:
        """Memory free where this playground loads models: the GPU's, else RAM."""
        from .loading import resolve_device

        free = environment.free_memory_bytes(torch.device(resolve_device(self.device)))
        return free if free is not None else environment.detect().ram_available_bytes

    def _side_by_side(self, models: list[str], prompt: str, settings: GenerationSettings) -> None:
        self._clear(self.compare_columns)
        together = sum(self._needs_bytes(m) for m in models if m != self.loaded_name) <= 0.8 * self._budget_bytes()
        columns, extra = [], {}
        try:
            for name in models:
                self.model_status.value = (f"Side by side: <b>{html.escape(name)}</b> ({len(columns) + 1}/{len(models)})"
                                           f"{'' if together else ' · one model in memory at a time'}")
                if name == self.loaded_name or not together:
                    loaded = self._load(name)  # the previous model goes first when both do not fit
                else:  # they all fit: keep the playground's own model loaded beside the others
                    extra[name] = loaded = self._loader(name, device=self.device, dtype=self.dtype)
                result = self._column(name, loaded, prompt, settings, columns, len(models))
                if result.finish_reason == "stopped" or self._interrupted:
                    break
        finally:
            for loaded in extra.values():
                loaded.unload()
        if self.loaded_name != self.model_picker.value:
            self.model_status.value += (f" \u00b7 <i>{html.escape(self.model_picker.value)} loads again at the "
                                        "next Generate</i>")

    def _column(self, name: str, loaded: LoadedModel, prompt: str, settings: GenerationSettings,
                columns: list, count: int) -> GenerationResult:
        text_stream = stream(loaded.model, loaded.tokenizer, prompt, settings, on_step=self._pump)
        self._stream = text_stream
        self.stop_button.disabled = False
        header, body = W.HTML(f"<b>{html.escape(name)}</b>"), W.HTML()
        column = W.VBox([header, body], layout=W.Layout(width=f"{max(25, 100 // count)}%", border="1px solid #ddd",
                                                         padding="4px"))
        column.add_class("opt-column")
        columns.append(column)
        self.compare_columns.children = tuple(columns)
        pieces, shown = [], 0.0
        try:
            for piece in text_stream:
                pieces.append(piece)
                if time.perf_counter() - shown >= self.refresh_seconds:
                    shown = time.perf_counter()
                    body.value = html.escape(prompt) + "<b>" + html.escape("".join(pieces)) + "</b>"
        finally:
            self._stream = None  # an interrupt while the next model loads must end that load
        body.value = html.escape(prompt) + "<b>" + html.escape("".join(pieces)) + "</b>"
        result = text_stream.result
        t = result.timings
        header.value = (f"<b>{html.escape(name)}</b><br><small>{t.new_tokens} tokens, {t.tokens_per_second:.1f} "
                        f"tokens/s, first token {t.time_to_first_token or 0:.2f} s, {t.total_seconds:.2f} s, "
                        f"seed {settings.seed}</small>")
        self._record(Run(label=f"side by side {len(columns)}", model=name, prompt_ids=result.prompt_token_ids,
                         prompt=prompt, tokens=[], result=result, text=result.text))
        return result

    # ------------------------------------------------------------------------------------- history

    def _record(self, run: Run) -> None:
        result = run.result
        t = result.timings
        self.history.append({
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "run": run.label, "model": run.model,
            "prompt": run.prompt, "output": run.text, "settings": result.settings.as_dict(),
            "finish_reason": result.finish_reason, "new_tokens": t.new_tokens,
            "tokens_per_second": round(t.tokens_per_second, 3),
            "time_to_first_token": None if t.time_to_first_token is None else round(t.time_to_first_token, 4),
            "total_seconds": round(t.total_seconds, 4),
        })
        rows = "".join(
            f"<tr><td>{html.escape(h['time'])}</td><td>{html.escape(h['run'])}</td><td>{html.escape(h['model'])}</td>"
            f"<td>{html.escape(h['prompt'][-60:])}</td><td>{html.escape(h['output'][:120])}</td>"
            f"<td>{h['new_tokens']}</td><td>{h['tokens_per_second']}</td><td>{h['finish_reason']}</td></tr>"
            for h in reversed(self.history[-50:])
        )
        self.history_view.value = (f"{TABLE}<tr><th>time</th><th>run</th><th>model</th><th>prompt</th><th>output</th>"
                                   "<th>tokens</th><th>tokens/s</th><th>finish</th></tr>" + rows + "</table>")

    def history_json(self) -> str:
        return json.dumps(self.history, indent=2, ensure_ascii=False)

    def history_csv(self) -> str:
        buffer = io.StringIO()
        columns = ["time", "run", "model", "prompt", "output", "finish_reason", "new_tokens", "tokens_per_second",
                   "time_to_first_token", "total_seconds", "settings"]
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        for row in self.history:
            writer.writerow({**row, "settings": json.dumps(row["settings"])})
        return buffer.getvalue()

    def export_history(self, kind: str = "json") -> str:
        """A download link for the history as JSON or CSV (shown in the History tab); returns the text."""
        text = self.history_json() if kind == "json" else self.history_csv()
        mime = "application/json" if kind == "json" else "text/csv"
        data = base64.b64encode(text.encode()).decode()
        self.export_link.value = (f'<a download="opt-history.{kind}" href="data:{mime};base64,{data}">'
                                  f"Download opt-history.{kind} ({len(self.history)} runs)</a>")
        return text
