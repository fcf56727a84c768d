"""The playground's Probabilities tab: a button per token shaded by its probability, alternatives, branches."""

from __future__ import annotations

import html
import math

import ipywidgets as W

from ..generation.results import TokenInfo
from .state import Run, branch_from
from .views import branches_html, clear, percent, probability_color, token_tooltip, visible

TOP_ALTERNATIVES = 5  # the alternatives each token records and shows


class TokenView:
    """Part of `Playground`: the token view and branching from a token (widgets from `layout`)."""

    def __init__(self) -> None:
        super().__init__()
        self._token_layout = W.Layout(width="auto", height="26px", margin="1px", padding="0 3px")  # one for all
        self._token_styles: dict[str, W.ButtonStyle] = {}  # one per shade, shared by the tokens of that shade
        self._tokens_run: Run | None = None  # the run whose tokens the box shows

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
        return index is not None and self.tabs.children[index] is self.probabilities_page

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
