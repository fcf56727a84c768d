"""The playground's status line (the run's figures) and message line (what went wrong, what to do)."""

from __future__ import annotations

import html

import ipywidgets as W

COLORS = {"error": "var(--jp-error-color1, #b00020)", "warning": "var(--jp-warn-color1, #8a6d00)",
          "info": "var(--jp-ui-font-color2, #555)"}


class StatusLine:
    """Owns `status` and `message`. An error replaces the status line, so no figure of an earlier run
    stands beside it."""

    def __init__(self) -> None:
        self.status = W.HTML()
        self.status.add_class("opt-status")
        self.message = W.HTML()
        self.message.add_class("opt-message")
        self.last_error: str | None = None
        self._said = ""

    def show(self, text: str) -> None:
        """The status line: a run's figures as it goes and when it ends."""
        self.status.value = html.escape(text)

    def say(self, text: str, kind: str = "info") -> None:
        """The message line ('' clears it); an error also clears the status line."""
        self.last_error = text if kind == "error" else None
        self._said = text
        if kind == "error":
            self.status.value = ""
        self.message.value = (f'<div class="opt-{kind}" style="color:{COLORS[kind]}">{html.escape(text)}</div>'
                              if text else "")

    def withdraw(self, text: str) -> None:
        """Clear the message if it is still `text` (a warning true only while something lasted)."""
        if self._said == text:
            self.say("")
