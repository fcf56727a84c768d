"""Where the playground's parts sit: model row, prompt and output beside the settings column."""

from __future__ import annotations

import ipywidgets as W

from .views import titled


def tabs(pages: list[W.Widget], titles: list[str]) -> W.Tab:
    """The tabs under the buttons: Output first."""
    tab = titled(W.Tab(children=pages), titles)
    tab.add_class("opt-tabs")
    return tab


def settings_panel(panel: W.Widget) -> W.Accordion:
    """The decoding settings, open, in a panel a user can fold away."""
    accordion = titled(W.Accordion(children=[panel]), ["Decoding settings"])
    accordion.selected_index = 0
    accordion.add_class("opt-settings-panel")
    return accordion


def arrange(style: W.Widget, model_row: list[W.Widget], main: list[W.Widget], side: list[W.Widget]) -> W.VBox:
    """The page: `model_row` across the top, `main` (prompt, buttons, output) in the wide column, `side`
    (settings) beside it, below it on a narrow screen."""
    main_column = W.VBox(main, layout=W.Layout(flex="3 1 520px", min_width="0", margin="0 12px 0 0"))
    main_column.add_class("opt-main")
    side_column = W.VBox(side, layout=W.Layout(flex="1 1 320px", min_width="0"))
    side_column.add_class("opt-side")
    body = W.Box([main_column, side_column], layout=W.Layout(display="flex", flex_flow="row wrap",
                                                            align_items="flex-start", width="100%"))
    root = W.VBox([style, *model_row, body], layout=W.Layout(width="100%"))
    root.add_class("opt-playground")
    return root
