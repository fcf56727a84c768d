"""The playground's History tab: every run with its settings, a Restore, and one-click JSON and CSV exports."""

from __future__ import annotations

import base64
from collections.abc import Callable

import ipywidgets as W

from .state import Run, history_csv, history_entry, history_json
from .views import ROW, explain, history_html


class HistoryPanel:
    """Owns the runs' history (`history`, one dict a run), its table, the export links (always current: one
    click downloads) and the Restore picker; `on_restore(entry)` puts a run's prompt and settings back."""

    def __init__(self, on_restore: Callable[[dict], None]):
        self._on_restore = on_restore
        self.history: list[dict] = []
        self.view = W.HTML("<i>No runs yet.</i>", layout=W.Layout(overflow="auto"))
        self.view.add_class("opt-history")
        self.export_link = W.HTML()
        self.export_link.add_class("opt-export")
        self.restore_picker = W.Dropdown(options=[("no runs yet", -1)], value=-1, layout=W.Layout(width="auto",
                                                                                               max_width="100%"))
        self.restore_picker.add_class("opt-restore-picker")
        explain(self.restore_picker, "A run from the table (numbered as there) to put back.")
        self.restore_button = W.Button(description="Restore", icon="undo", disabled=True,
                                       tooltip="Put this run's prompt and settings (its seed too) back in the controls, "
                                               "to run it again or change one thing.")
        self.restore_button.add_class("opt-restore")
        self.restore_button.on_click(lambda _: self.restore(self.restore_picker.value))
        self.page = W.VBox([W.HBox([self.restore_picker, self.restore_button, self.export_link], layout=ROW),
                            self.view])

    def record(self, run: Run) -> None:
        self.history.append(history_entry(run))
        self.view.value = history_html(self.history)
        self.restore_picker.options = [(f"{i + 1}: {h['run']} \u00b7 {h['prompt'][-40:]}", i)
                                       for i, h in reversed(list(enumerate(self.history)))]
        self.restore_picker.value = len(self.history) - 1
        self.restore_button.disabled = False
        self.export_link.value = self._links()

    def restore(self, index: int = -1) -> bool:
        """Put run `index` (0 the first; -1 the latest) back in the prompt and the controls."""
        if not self.history or not -len(self.history) <= index < len(self.history):
            return False
        self._on_restore(self.history[index])
        return True

    def json(self) -> str:
        return history_json(self.history)

    def csv(self) -> str:
        return history_csv(self.history)

    def _links(self) -> str:
        """Download links for the JSON and the CSV, made at each run so one click saves the file."""
        links = []
        for kind, text, mime in (("json", self.json(), "application/json"), ("csv", self.csv(), "text/csv")):
            data = base64.b64encode(text.encode()).decode()
            links.append(f'<a class="opt-link-button opt-export-{kind}" download="opt-history.{kind}" '
                         f'href="data:{mime};base64,{data}" title="Download every run ({len(self.history)}) with its '
                         f'settings and timings">\u2b07 opt-history.{kind}</a>')
        return " ".join(links)
