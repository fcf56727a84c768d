"""What the playground shows, as HTML and widgets: shaded tokens, the branches and history tables."""

from __future__ import annotations

import html
import math

import ipywidgets as W

from ..generation.results import TokenInfo
from .state import Run, common_prefix

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


def visible(text: str) -> str:
    """Token text as a button label: spaces and newlines shown, never collapsed to nothing."""
    return text.replace(" ", "\u00a0").replace("\n", "\u21b5") or "\u2205"


def percent(logprob: float) -> str:
    return f"{100 * math.exp(logprob):.1f}%"


def titled(container: W.Box, titles: list[str]) -> W.Box:
    """Name a Tab's or an Accordion's pages: `set_title` is what ipywidgets 7 and 8 both have."""
    for index, title in enumerate(titles):
        container.set_title(index, title)
    return container


def text_html(prompt: str, generated: str) -> str:
    """The Output tab's markup: the prompt in grey, then what the model wrote."""
    return (f'<div style="white-space:pre-wrap;font-family:monospace"><span style="color:#777">'
            f"{html.escape(prompt)}</span>{html.escape(generated)}</div>")


def token_tooltip(token: TokenInfo) -> str:
    """A token's probability and its most likely alternatives, one a line."""
    lines = [f"{percent(token.logprob)} for {token.text!r}" if token.logprob is not None else repr(token.text)]
    lines += [f"{i + 1}. {text!r} {percent(lp)}" for i, (_, text, lp) in enumerate(token.top)]
    return "\n".join(lines)


def branches_html(runs: list[Run]) -> str | None:
    """Every branch beside the run it came from, the part where they differ in bold (None: no branches)."""
    by_label = {r.label: r for r in runs}
    parents = {r.parent for r in runs if r.parent}
    if not parents:
        return None
    rows = []
    for run in (r for r in runs if r.parent or r.label in parents):
        parent = by_label.get(run.parent) if run.parent else None
        common = common_prefix(run.text, parent.text) if parent is not None else 0
        where = (f"token {run.branched_at + 1}: {html.escape(repr(run.replaced[0]))} \u2192 "
                 f"{html.escape(repr(run.replaced[1]))}" if run.replaced else "\u2014")
        mean = run.mean_logprob
        rows.append(
            f"<tr><td>{html.escape(run.label)}</td><td>{html.escape(run.parent or '')}</td><td>{where}</td>"
            f'<td><span style="color:#777">{html.escape(run.text[:common])}</span>'
            f"<b>{html.escape(run.text[common:])}</b></td>"
            f"<td>{'' if mean is None else f'{mean:.2f}'}</td></tr>"
        )
    return (f"{TABLE}<tr><th>run</th><th>from</th><th>branched at</th><th>text (where it differs in bold)</th>"
            "<th>mean log-prob</th></tr>" + "".join(rows) + "</table>")


def history_html(history: list[dict]) -> str:
    """The latest 50 history rows, newest first."""
    rows = "".join(
        f"<tr><td>{html.escape(h['time'])}</td><td>{html.escape(h['run'])}</td><td>{html.escape(h['model'])}</td>"
        f"<td>{html.escape(h['prompt'][-60:])}</td><td>{html.escape(h['output'][:120])}</td>"
        f"<td>{h['new_tokens']}</td><td>{h['tokens_per_second']}</td><td>{h['finish_reason']}</td></tr>"
        for h in reversed(history[-50:])
    )
    return (f"{TABLE}<tr><th>time</th><th>run</th><th>model</th><th>prompt</th><th>output</th>"
            "<th>tokens</th><th>tokens/s</th><th>finish</th></tr>" + rows + "</table>")


def clear(box: W.Box) -> None:
    """Empty a box and close its widgets (each open widget holds a channel to the browser)."""
    old, box.children = box.children, ()
    stack = list(old)
    while stack:
        widget = stack.pop()
        stack.extend(getattr(widget, "children", ()))
        widget.close()
