"""The playground's widgets and where they sit: built once, kept as the app's attributes (its handles)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ipywidgets as W

from ..generation.settings import PRESETS
from .token_view import TOP_ALTERNATIVES
from .views import COLUMNS, LABELS, ROW, titled

if TYPE_CHECKING:
    from .app import Playground


def build(app: Playground, model: str) -> None:
    """Every widget of the app (its buttons wired to its public methods); `model` is the picker's first value."""
    options = [(c.label, c.name) for c in app.choices]
    _model_row(app, options, model)
    app.prompt = W.Textarea(value="Natural language processing is a subfield of",
                             placeholder="Type a prompt, then press Generate", layout=W.Layout(width="auto", height="90px"))
    app.prompt.add_class("opt-prompt")
    settings = _settings(app)
    _buttons_and_status(app)
    pages = [app.output, _probabilities_page(app), _branches_page(app), _side_by_side_page(app, options),
             _history_page(app)]
    app.tabs = titled(W.Tab(children=pages),
                       ["Output", "Probabilities", "Branches", "Side by side", "History"])
    app.tabs.add_class("opt-tabs")
    app.widget = W.VBox([
        W.HBox([app.model_picker, app.progress], layout=ROW), app.model_status, app.prompt, settings,
        W.HBox([app.generate_button, app.stop_button]), app.status, app.message, app.tabs,
    ], layout=W.Layout(width="100%"))
    app.widget.add_class("opt-playground")


def _model_row(app: Playground, options: list[tuple[str, str]], model: str) -> None:
    """The model picker, its loading progress bar and status line."""
    app.model_picker = W.Dropdown(options=options, value=model, description="Model", style=LABELS,
                                   layout=W.Layout(width="auto", flex="1 1 340px", max_width="760px"))
    app.model_picker.add_class("opt-model")
    app.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="auto", flex="0 1 240px", visibility="hidden"))
    app.model_status = W.HTML()
    app.model_status.add_class("opt-model-status")


def _settings(app: Playground) -> W.Accordion:
    """The preset and every decoding control (`decoding_controls`), in an accordion."""
    app.preset = W.Dropdown(options=["custom", *PRESETS], value="balanced sampling", description="Preset",
                             style=LABELS)
    app.preset.add_class("opt-preset")
    slider = dict(continuous_update=False, style=LABELS, layout=W.Layout(width="auto"))
    app.max_new_tokens = W.IntSlider(64, 1, 512, description="max new tokens", **slider)
    app.do_sample = W.Checkbox(True, description="sample (off: greedy)", indent=False, layout=W.Layout(width="auto"))
    app.temperature = W.FloatSlider(0.7, min=0.05, max=2.0, step=0.05, description="temperature", **slider)
    app.top_k = W.IntSlider(0, 0, 200, description="top-k (0: off)", **slider)
    app.top_p = W.FloatSlider(0.9, min=0.05, max=1.0, step=0.01, description="top-p", **slider)
    app.typical_p = W.FloatSlider(1.0, min=0.05, max=1.0, step=0.01, description="typical-p", **slider)
    app.repetition_penalty = W.FloatSlider(1.0, min=0.5, max=2.0, step=0.05, description="repetition penalty", **slider)
    app.no_repeat_ngram_size = W.IntSlider(0, 0, 10, description="no-repeat n-gram", **slider)
    app.num_beams = W.IntSlider(1, 1, 8, description="beams", **slider)
    app.penalty_alpha = W.FloatSlider(0.0, min=0.0, max=1.0, step=0.05, description="contrastive \u03b1", **slider)
    app.seed = W.IntText(0, description="seed", style=LABELS, layout=W.Layout(width="auto", flex="0 1 240px"))
    app.fixed_seed = W.Checkbox(False, description="fixed seed", indent=False, layout=W.Layout(width="auto"))
    app.stop_strings = W.Text("", description="stop strings", placeholder="separate with | ; \\n is a newline",
                               style=LABELS, layout=W.Layout(width="auto"))
    app.max_new_tokens.add_class("opt-max-new-tokens")
    app.temperature.add_class("opt-temperature")
    app.decoding_controls = [app.max_new_tokens, app.do_sample, app.temperature, app.top_k, app.top_p,
                             app.typical_p, app.repetition_penalty, app.no_repeat_ngram_size, app.num_beams,
                             app.penalty_alpha, app.seed, app.fixed_seed, app.stop_strings]
    grid = W.GridBox([app.max_new_tokens, app.temperature, app.top_k, app.top_p, app.typical_p,
                      app.repetition_penalty, app.no_repeat_ngram_size, app.num_beams, app.penalty_alpha,
                      W.HBox([app.seed, app.fixed_seed], layout=ROW)],
                     layout=W.Layout(grid_template_columns=COLUMNS))
    settings = titled(W.Accordion(children=[W.VBox([W.HBox([app.preset, app.do_sample], layout=ROW), grid,
                                                    app.stop_strings])]), ["Decoding settings"])
    settings.selected_index = 0
    return settings


def _buttons_and_status(app: Playground) -> None:
    """Generate and Stop, the status and message lines, the output text."""
    app.generate_button = W.Button(description="Generate", button_style="primary", icon="play")
    app.generate_button.add_class("opt-generate")
    app.stop_button = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
    app.stop_button.add_class("opt-stop")
    app.generate_button.on_click(lambda _: app.generate())
    app.stop_button.on_click(lambda _: app.stop())
    app.status = W.HTML()
    app.status.add_class("opt-status")
    app.message = W.HTML()
    app.message.add_class("opt-message")
    app.output = W.HTML(layout=W.Layout(border="1px solid #ddd", padding="6px", min_height="80px"))
    app.output.add_class("opt-output")


def _probabilities_page(app: Playground) -> W.VBox:
    """The token view: a button per token, shaded by its probability, and the alternatives of the one picked."""
    app.tokens_box = W.Box(layout=W.Layout(display="flex", flex_flow="row wrap", align_items="center"))
    app.tokens_box.add_class("opt-tokens")
    app.alternatives = W.VBox()
    app.alternatives.add_class("opt-alternatives")
    page = W.VBox([
        W.HTML("<small>Each generated token is shaded by its probability under the model (red: unlikely, green: "
               f"likely). Hover for its top-{TOP_ALTERNATIVES} alternatives; click a token to see them and continue from any "
               "alternative (a branch).</small>"),
        app.tokens_box, app.alternatives])
    app.probabilities_page = page
    return page


def _branches_page(app: Playground) -> W.HTML:
    """Every branch beside the run it came from."""
    app.branches_view = W.HTML("<i>No branches yet: click a token in Probabilities and pick an alternative.</i>",
                                layout=W.Layout(overflow="auto"))
    app.branches_view.add_class("opt-branches")
    return app.branches_view


def _side_by_side_page(app: Playground, options: list[tuple[str, str]]) -> W.VBox:
    """The same prompt on several models, in columns."""
    app.compare_picker = W.SelectMultiple(options=options, rows=min(8, len(options)), description="Models",
                                           style=LABELS)
    app.compare_button = W.Button(description="Run side by side", icon="columns")
    app.compare_button.add_class("opt-compare")
    app.compare_button.on_click(lambda _: app.side_by_side())
    app.compare_columns = W.HBox(layout=W.Layout(align_items="flex-start", overflow="auto"))
    app.compare_columns.add_class("opt-columns")
    return W.VBox([W.HTML("<small>The same prompt, settings and seed on several sizes, loaded one at a time "
                          "when memory demands.</small>"),
                   W.HBox([app.compare_picker, app.compare_button], layout=ROW), app.compare_columns])


def _history_page(app: Playground) -> W.VBox:
    """Every run, and its export as JSON or CSV."""
    app.history_view = W.HTML("<i>No runs yet.</i>", layout=W.Layout(overflow="auto"))
    app.history_view.add_class("opt-history")
    app.export_json = W.Button(description="Export JSON", icon="download")
    app.export_csv = W.Button(description="Export CSV", icon="download")
    app.export_json.on_click(lambda _: app.export_history("json"))
    app.export_csv.on_click(lambda _: app.export_history("csv"))
    app.export_link = W.HTML()
    app.export_link.add_class("opt-export")
    return W.VBox([W.HBox([app.export_json, app.export_csv, app.export_link], layout=ROW), app.history_view])
