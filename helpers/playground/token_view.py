"""The Probabilities tab (a chip per token, alternatives under the one clicked) and the Branches tab."""

from __future__ import annotations

import html
import math
from collections.abc import Callable

import ipywidgets as W

from ..generation.results import TokenInfo
from .state import Run
from .views import MUTED, branches_html, clear, legend_html, percent, probability_color, token_tooltip, visible

TOP_ALTERNATIVES = 5  # the alternatives each token records and shows


class TokenView:
    """Owns the token chips (`tokens_box`), the alternatives of the chip clicked (`alternatives`, shown on the
    line under it), the Probabilities page and the Branches view. `on_branch(index, token_id)` continues the
    shown run from a token replaced by an alternative."""

    def __init__(self, on_branch: Callable[[int, int], bool]):
        self._on_branch = on_branch
        self.tokens_box = W.Box(layout=W.Layout(display="flex", flex_flow="row wrap", align_items="center"))
        self.tokens_box.add_class("opt-tokens")
        self.alternatives = W.VBox(layout=W.Layout(width="100%", flex="0 0 100%"))
        self.alternatives.add_class("opt-alternatives")
        self.probabilities_page = W.VBox([W.HTML(legend_html()), self.tokens_box])
        self.branches_view = W.HTML("<i>No branches yet: click a token in Probabilities and pick an alternative.</i>",
                                    layout=W.Layout(overflow="auto"))
        self.branches_view.add_class("opt-branches")
        self.selected_token: int | None = None
        self.open = False  # whether the Probabilities page is shown: chips are drawn only then
        self._layout = W.Layout(width="auto", height="26px", margin="1px", padding="0 3px")  # one for all chips
        self._styles: dict[str, W.ButtonStyle] = {}  # one per shade, shared by the chips of that shade
        self._run: Run | None = None  # the run whose tokens the box shows
        self._head = W.HTML()
        self._chips: list[W.Button] = []

    def set_open(self, is_open: bool) -> None:
        """The Probabilities page was shown or hidden: opening it draws what it missed."""
        self.open = is_open
        if is_open and self._run is not None:
            self.show(self._run)

    def show(self, run: Run, fresh: bool = False) -> None:
        """Add chips for the tokens not shown yet (all of them, after the prompt, for a new run)."""
        if fresh or self._run is not run:
            self.selected_token = None
            self.tokens_box.children = ()
            clear(self.alternatives)
            for chip in self._chips:
                chip.close()
            self._chips = []
            self._head.value = f'<span style="color:{MUTED}">{html.escape(run.prompt[-200:])}</span>'
            self._run = run
            self._arrange()
        if not self.open:
            return
        have = len(self._chips)
        self._chips += [self._chip(i, t) for i, t in enumerate(run.tokens[have:], start=have)]
        if len(self._chips) > have:
            self._arrange()

    def _arrange(self) -> None:
        after = [] if self.selected_token is None else [self.alternatives]
        cut = len(self._chips) if self.selected_token is None else self.selected_token + 1
        self.tokens_box.children = (self._head, *self._chips[:cut], *after, *self._chips[cut:])

    def _chip(self, index: int, token: TokenInfo) -> W.Button:
        color = probability_color(math.exp(token.logprob) if token.logprob is not None else 0.0)
        style = self._styles.get(color) or self._styles.setdefault(color, W.ButtonStyle(button_color=color))
        chip = W.Button(description=visible(token.text), tooltip=token_tooltip(token), layout=self._layout, style=style)
        chip.add_class("opt-token")
        chip.on_click(lambda _, i=index: self.select_token(i))
        return chip

    def select_token(self, index: int) -> None:
        """Show a token's alternatives on the line under it, each a button that branches from there."""
        run = self._run
        if run is None or not 0 <= index < len(run.tokens):
            return
        self.selected_token = index
        token = run.tokens[index]
        header = W.HTML(f"Token {index + 1}: <b>{html.escape(visible(token.text))}</b>"
                        + (f" ({percent(token.logprob)})" if token.logprob is not None else "")
                        + ". Continue from here with:")
        buttons = []
        for token_id, text, logprob in token.top:
            b = W.Button(description=f"{visible(text)} {percent(logprob)}", tooltip=f"continue with {text!r} here",
                         button_style="info" if token_id == token.id else "", layout=W.Layout(width="auto"))
            b.add_class("opt-alternative")
            b.style.button_color = probability_color(math.exp(logprob))
            b.on_click(lambda _, i=index, t=token_id: self._on_branch(i, t))
            buttons.append(b)
        close = W.Button(description="\u2715", tooltip="hide the alternatives", layout=W.Layout(width="auto"))
        close.on_click(lambda _: self.unselect())
        clear(self.alternatives)
        self.alternatives.children = (header, W.HBox([*buttons, close], layout=W.Layout(flex_flow="row wrap")))
        self._arrange()

    def unselect(self) -> None:
        self.selected_token = None
        self._arrange()

    def show_branches(self, runs: list[Run]) -> None:
        """Every branch under the run it came from, the part where they differ marked."""
        table = branches_html(runs)
        if table is not None:
            self.branches_view.value = table
