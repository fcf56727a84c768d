"""The playground's model: the picked one loaded, a working one kept when a switch fails, its status line."""

from __future__ import annotations

import html
import time

import torch

from ..environment import resident_memory_bytes
from ..loading.model import LoadedModel
from ..units import human_bytes
from .state import free_bytes, needs_bytes


class ModelLoading:
    """Part of `Playground`: its model picker's jobs (the widgets are `layout`'s, the job runner `Jobs`)."""

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
        return f"RAM {human_bytes(resident_memory_bytes())}"

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

    def _needs_bytes(self, name: str) -> int:
        return needs_bytes(self.choices, name, self.device, self.dtype)

    def _budget_bytes(self) -> int:
        return free_bytes(self.device)
