"""Side by side: the same prompt, settings and seed on several models, each in a column with its timings."""

from __future__ import annotations

import html
import time

import ipywidgets as W

from ..generation.results import GenerationResult
from ..generation.settings import GenerationSettings
from ..generation.streaming import stream
from ..loading.model import LoadedModel
from .state import Run
from .views import clear

TOGETHER_SHARE = 0.8  # the models load side by side when they need at most this share of the free memory


class SideBySide:
    """Part of `Playground`: the Side by side tab's runs (widgets from `layout`)."""

    def _side_by_side(self, models: list[str], prompt: str, settings: GenerationSettings) -> None:
        """Each model in turn, a column each; the playground's own model stays loaded when they all fit."""
        clear(self.compare_columns)
        needs = sum(self._needs_bytes(m) for m in models if m != self.loaded_name)
        together = needs <= TOGETHER_SHARE * self._budget_bytes()
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

    def _column(self, name: str, loaded: LoadedModel, prompt: str, settings: GenerationSettings, columns: list,
                count: int) -> GenerationResult:
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
