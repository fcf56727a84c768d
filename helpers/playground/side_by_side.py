"""Side by side: the same prompt, settings and seed on several models, each in a column with its timings."""

from __future__ import annotations

import html
from collections.abc import Callable

import ipywidgets as W

from ..generation.results import GenerationResult
from ..generation.settings import GenerationSettings
from ..generation.streaming import stream
from ..loading.model import LoadedModel
from .jobs import Jobs
from .model_loading import ModelLoading
from .state import Run
from .views import MUTED, ROW, clear, explain

TOGETHER_SHARE = 0.8  # the models load side by side when they need at most this share of the free memory


class ModelChecklist:
    """A checkbox a model, its whole name beside it (a plain click ticks it); `value` is the names ticked."""

    def __init__(self, options: list[tuple[str, str]]):
        self.widget = W.Box(layout=W.Layout(display="flex", flex_flow="row wrap"))
        self.widget.add_class("opt-compare-models")
        self._boxes: dict[str, W.Checkbox] = {}
        self._ticked: list[str] = []  # in the order ticked: the columns' order
        for label, name in options:
            self.add(label, name)

    def add(self, label: str, name: str) -> None:
        if name in self._boxes:
            return
        box = W.Checkbox(False, description=label, indent=False, layout=W.Layout(width="auto", margin="0 12px 0 0"))
        box.add_class("opt-compare-choice")
        explain(box, f"Include {name} in the comparison.")
        box.observe(lambda change, n=name: self._tick(n, change["new"]), names="value")
        self._boxes[name] = box
        self.widget.children = tuple(self._boxes.values())

    def sync(self, options: list[tuple[str, str]]) -> None:
        """Add a checkbox for each model the picker gained (a folder typed beside it)."""
        for label, name in options:
            self.add(label, name)

    def _tick(self, name: str, ticked: bool) -> None:
        if name in self._ticked:
            self._ticked.remove(name)
        if ticked:
            self._ticked.append(name)

    @property
    def value(self) -> tuple[str, ...]:
        return tuple(self._ticked)

    @value.setter
    def value(self, names) -> None:
        for box in self._boxes.values():
            box.value = False
        for name in names:
            self._boxes[name].value = True


class SideBySide:
    """Owns the Side by side page (the model checkboxes, its button, the columns) and runs its job on the
    playground's model loading and jobs; every column's run goes to `record`."""

    def __init__(self, models: ModelLoading, jobs: Jobs, record: Callable[[Run], None], on_click: Callable[[], None]):
        self._models, self._jobs, self._record = models, jobs, record
        self.picker = ModelChecklist(models.options())
        self.button = W.Button(description="Run side by side", icon="columns",
                               tooltip="The prompt and settings of the main tab, with one seed, on every model ticked")
        self.button.add_class("opt-compare")
        self.button.on_click(lambda _: on_click())
        self.columns = W.HBox(layout=W.Layout(align_items="flex-start", overflow="auto", flex_flow="row wrap"))
        self.columns.add_class("opt-columns")
        self.page = W.VBox([W.HTML("<small>Tick two or more models: the same prompt, settings and seed run on each, "
                                   "loaded one at a time when memory demands.</small>"),
                            self.picker.widget, W.HBox([self.button], layout=ROW), self.columns])

    def enable(self, enabled: bool) -> None:
        self.button.disabled = not enabled

    def run(self, models: list[str], prompt: str, settings: GenerationSettings) -> None:
        """Each model in turn, a column each; the playground's own model stays loaded when they all fit."""
        clear(self.columns)
        loading = self._models
        needs = sum(loading.needs_bytes(m) for m in models if m != loading.loaded_name)
        together = needs <= TOGETHER_SHARE * loading.budget_bytes()
        columns, extra = [], {}
        try:
            for name in models:
                loading.show_status(f"Side by side: <b>{html.escape(loading.label(name))}</b> ({len(columns) + 1}/{len(models)})"
                                    f"{'' if together else ' · one model in memory at a time'}")
                if name == loading.loaded_name or not together:
                    loaded = loading.load(name)  # the previous model goes first when both do not fit
                else:  # they all fit: keep the playground's own model loaded beside the others
                    extra[name] = loaded = loading.load_beside(name)
                result = self._column(name, loaded, prompt, settings, columns, len(models))
                if result.finish_reason == "stopped" or self._jobs.interrupted:
                    break
        finally:
            for loaded in extra.values():
                loaded.unload()
        if loading.loaded_name != loading.picker.value:
            loading.show_status(f"{loading.status.value} \u00b7 <i>{html.escape(loading.picker.value)} loads again at "
                                "the next Generate</i>")

    def _column(self, name: str, loaded: LoadedModel, prompt: str, settings: GenerationSettings, columns: list,
                count: int) -> GenerationResult:
        text_stream = stream(loaded.model, loaded.tokenizer, prompt, settings, on_step=self._jobs.pump)
        header, body = W.HTML(f"<b>{html.escape(self._models.label(name))}</b>"), W.HTML()
        column = W.VBox([header, body], layout=W.Layout(flex=f"1 1 {max(200, 900 // count)}px", min_width="0",
                                                         padding="4px"))
        column.add_class("opt-column")
        columns.append(column)
        self.columns.children = tuple(columns)

        def draw(pieces: list[str], final: bool) -> None:
            body.value = (f"<div class='opt-text'><span style='color:{MUTED}'>{html.escape(prompt)}</span>"
                          f"{html.escape(''.join(pieces))}</div>")

        self._jobs.follow(text_stream, draw)
        result = text_stream.result
        t = result.timings
        header.value = (f"<b>{html.escape(self._models.label(name))}</b><br><small>{t.new_tokens} tokens, {t.tokens_per_second:.1f} "
                        f"tokens/s, first token {t.time_to_first_token or 0:.2f} s, {t.total_seconds:.2f} s, "
                        f"seed {result.settings.seed}</small>")
        self._record(Run(label=f"side by side {len(columns)}", model=name, prompt_ids=result.prompt_token_ids,
                         prompt=prompt, tokens=[], result=result, text=result.text))
        return result
