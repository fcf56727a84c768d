"""What the playground shows, as HTML and widgets: shaded tokens, the branches and history tables, tooltips."""

from __future__ import annotations

import html
import math

import ipywidgets as W

from ..generation.results import TokenInfo
from .state import Run, common_prefix

LABELS = {"description_width": "130px"}
ROW = W.Layout(flex_flow="row wrap", align_items="center")  # a row that wraps instead of squeezing
MUTED = "var(--jp-ui-font-color2, var(--colab-secondary-text-color, #777))"  # the prompt, grey in either theme
# Tables (history, branches) fill the width; cells wrap between words only, never inside one (a table wider
# than the app scrolls inside it).
TABLE = "<table class='opt-table'>"


def probability_color(p: float) -> str:
    """Token shading: red for unlikely, through yellow, to green for likely."""
    return f"hsl({round(120 * max(0.0, min(1.0, p)))}, 75%, 82%)"



def legend_html() -> str:
    """The Probabilities tab's colour key and how a leading space shows."""
    swatches = "".join(f"<span class='opt-swatch' style='background:{probability_color(p)}'>{label}</span>"
                       for p, label in ((0.02, "&lt; 5%"), (0.25, "25%"), (0.5, "50%"), (0.75, "75%"), (0.98, "&gt; 95%")))
    return ("<div class='opt-legend'><small>Each token shaded by the probability the model gave it: " + swatches
            + " \u00b7 \u2423 is a space (a token starting with one begins a word). Click a token for its "
            "alternatives; click an alternative to continue from there (a branch).</small></div>")

def visible(text: str) -> str:
    """Token text as a label: a space shown as '\u2423' (a word's start), a newline as '\u21b5', never nothing."""
    return text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def percent(logprob: float) -> str:
    return f"{100 * math.exp(logprob):.1f}%"


def titled(container: W.Box, titles: list[str]) -> W.Box:
    """Name a Tab's or an Accordion's pages: `set_title` is what ipywidgets 7 and 8 both have."""
    for index, title in enumerate(titles):
        container.set_title(index, title)
    return container


def explain(widget: W.DOMWidget, text: str) -> W.DOMWidget:
    """Give a control its tooltip in plain words: `tooltip` on ipywidgets 8 (and buttons on 7), else
    ipywidgets 7's `description_tooltip`."""
    if widget.has_trait("tooltip"):
        widget.tooltip = text
    else:
        widget.description_tooltip = text
    return widget


def text_html(prompt: str, generated: str) -> str:
    """The Output tab's markup: the prompt in grey, then what the model wrote."""
    return (f'<div class="opt-text"><span class="opt-prompt-text" style="color:{MUTED}">{html.escape(prompt)}</span>'
            f"{html.escape(generated)}</div>")


def token_tooltip(token: TokenInfo) -> str:
    """A token's probability and its most likely alternatives, one a line."""
    lines = [f"{percent(token.logprob)} for {token.text!r}" if token.logprob is not None else repr(token.text)]
    lines += [f"{i + 1}. {text!r} {percent(lp)}" for i, (_, text, lp) in enumerate(token.top)]
    return "\n".join(lines)


def branches_html(runs: list[Run]) -> str | None:
    """Every branch under the run it came from: where it branched, the shared text in grey and the part
    where it differs marked (None: no branches)."""
    by_label = {r.label: r for r in runs}
    parents = {r.parent for r in runs if r.parent}
    if not parents:
        return None
    cards = []
    for run in (r for r in runs if r.parent or r.label in parents):
        parent = by_label.get(run.parent) if run.parent else None
        common = common_prefix(run.text, parent.text) if parent is not None else 0
        if run.replaced:
            where = (f" from <b>{html.escape(run.parent)}</b> at token {run.branched_at + 1}: "
                     f"<code>{html.escape(visible(run.replaced[0]))}</code> \u2192 "
                     f"<code>{html.escape(visible(run.replaced[1]))}</code>")
        else:
            where = " (the original)"
        mean = run.mean_logprob
        score = "" if mean is None else f" \u00b7 mean log-prob {mean:.2f}"
        shared, differs = (run.text[:common], run.text[common:]) if parent is not None else ("", run.text)
        body = (f"<span style='color:{MUTED}'>{html.escape(shared)}</span>" if shared else "") + (
            html.escape(differs) if parent is None else f"<mark>{html.escape(differs)}</mark>" if differs else "")
        cards.append(f"<div class='opt-branch'><div><b>{html.escape(run.label)}</b>{where}<small>{score}</small></div>"
                     f"<div class='opt-text'>{body}</div></div>")
    return "".join(cards)


def settings_text(settings: dict) -> str:
    """A run's settings in a few words (the history table's column)."""
    mode = "sample" if settings.get("do_sample") else "greedy"
    parts = [mode, f"{settings.get('max_new_tokens')} new"]
    if settings.get("do_sample"):
        parts += [f"t={settings.get('temperature')}", f"top-p={settings.get('top_p')}"]
        parts += [f"top-k={settings['top_k']}"] if settings.get("top_k") else []
    parts += [f"beams={settings['num_beams']}"] if settings.get("num_beams", 1) > 1 else []
    parts += [f"\u03b1={settings['penalty_alpha']}"] if settings.get("penalty_alpha") else []
    parts += [f"seed={settings['seed']}"] if settings.get("seed") is not None else []
    return " ".join(str(p) for p in parts)


def short_name(model: str) -> str:
    """A model as a table shows it: a folder's or hub id's last part (the whole name is its tooltip)."""
    return model.rstrip("/").rsplit("/", 1)[-1] or model


def history_html(history: list[dict]) -> str:
    """The latest 50 history rows, newest first, numbered as the Restore picker numbers them."""
    rows = "".join(
        f"<tr><td class='opt-nowrap'>{len(history) - i}</td><td class='opt-nowrap'>{html.escape(h['time'][11:])}</td>"
        f"<td class='opt-nowrap'>{html.escape(h['run'])}</td>"
        f"<td title='{html.escape(h['model'], quote=True)}'>{html.escape(short_name(h['model']))}</td>"
        f"<td>{html.escape(h['prompt'][-60:])}</td><td>{html.escape(h['output'][:120])}</td>"
        f"<td>{html.escape(settings_text(h['settings']))}</td>"
        f"<td class='opt-nowrap'>{h['new_tokens']} \u00b7 {h['tokens_per_second']}/s</td>"
        f"<td>{h['finish_reason']}</td></tr>"
        for i, h in enumerate(reversed(history[-50:]))
    )
    return (f"{TABLE}<tr><th>#</th><th>time</th><th>run</th><th>model</th><th>prompt</th><th>output</th>"
            "<th>settings</th><th>tokens</th><th>finish</th></tr>" + rows + "</table>")


def clear(box: W.Box, keep: tuple[W.Widget, ...] = ()) -> None:
    """Empty a box and close its widgets (each open widget holds a channel to the browser), except `keep`."""
    old, box.children = box.children, ()
    stack = [w for w in old if w not in keep]
    while stack:
        widget = stack.pop()
        stack.extend(getattr(widget, "children", ()))
        widget.close()
