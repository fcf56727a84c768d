"""The playground's decoding controls: a preset, every setting with its tooltip, settings files to keep."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import fields

import ipywidgets as W

from ..errors import HelpersError
from ..generation.settings import PRESETS, GenerationSettings
from .quiet import Quiet
from .views import LABELS, ROW, explain

FIELDS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
          "no_repeat_ngram_size", "num_beams", "penalty_alpha")
FILE_KIND = "opt-playground-settings"  # the key that marks a settings file as ours
TIPS = {
    "preset": "A starting point: the 2022 tutorial's greedy decoding, balanced or creative sampling, contrastive "
              "search. Changing any control makes it 'custom'.",
    "max_new_tokens": "The most tokens to write (a token is a word or part of one). It may stop sooner: at the end "
                      "of text or a stop string.",
    "do_sample": "On: draw each token at random, by the odds the settings below shape. Off: always take the most "
                 "likely token (greedy), or the best beams with beams > 1.",
    "temperature": "Sampling only. Below 1 makes likely tokens likelier (safer text), above 1 flattens the odds "
                   "(more surprising text).",
    "top_k": "Sampling: draw only among the k most likely tokens (0: no limit). Contrastive search: how many "
             "candidates it compares.",
    "top_p": "Sampling only: draw only among the most likely tokens that together hold this much probability "
             "(1: no limit).",
    "typical_p": "Sampling only: keep the tokens whose surprise is closest to the average (1: off).",
    "repetition_penalty": "Above 1 makes tokens already in the text less likely, to avoid loops (1: off).",
    "no_repeat_ngram_size": "Never repeat a run of this many tokens (0: off).",
    "num_beams": "Beam search: follow this many candidate texts and keep the likeliest (1: off).",
    "penalty_alpha": "Contrastive search (with sampling off and top-k > 1): how much to avoid tokens that repeat "
                     "what was said (0: off).",
    "seed": "The random seed the run used (sampling). With 'fixed seed' on, every run uses this one, so the same "
            "settings give the same text.",
    "fixed_seed": "On: every run uses the seed in the box. Off: each run draws a new seed, shown in the box.",
    "stop_strings": "Stop when the text reaches one of these (separate them with |; \\n is a new line).",
    "save": "Download the settings as a JSON file you keep; 'Load settings' reads it back.",
    "load": "Read settings from a JSON file saved with 'Save settings'.",
}


class DecodingControls:
    """Owns the preset, every decoding control (`controls`), the seed, stop strings and the settings file
    links; `settings()` reads them, `show(settings)` sets them. `say(text, kind)` reports a bad file."""

    def __init__(self, say: Callable[[str, str], None]):
        self._say = say
        self._quiet = Quiet()
        self.preset = W.Dropdown(options=["custom", *PRESETS], value="balanced sampling", description="Preset",
                                 style=LABELS, layout=W.Layout(width="auto"))
        self.preset.add_class("opt-preset")
        slider = dict(continuous_update=False, style=LABELS, layout=W.Layout(width="auto"))
        self.max_new_tokens = W.IntSlider(64, 1, 512, description="max new tokens", **slider)
        self.do_sample = W.Checkbox(True, description="sample at random", indent=False, layout=W.Layout(width="auto"))
        self.temperature = W.FloatSlider(0.7, min=0.05, max=2.0, step=0.05, description="temperature", **slider)
        self.top_k = W.IntSlider(0, 0, 200, description="top-k (0: off)", **slider)
        self.top_p = W.FloatSlider(0.9, min=0.05, max=1.0, step=0.01, description="top-p", **slider)
        self.typical_p = W.FloatSlider(1.0, min=0.05, max=1.0, step=0.01, description="typical-p", **slider)
        self.repetition_penalty = W.FloatSlider(1.0, min=0.5, max=2.0, step=0.05, description="repetition penalty",
                                                **slider)
        self.no_repeat_ngram_size = W.IntSlider(0, 0, 10, description="no-repeat n-gram", **slider)
        self.num_beams = W.IntSlider(1, 1, 8, description="beams", **slider)
        self.penalty_alpha = W.FloatSlider(0.0, min=0.0, max=1.0, step=0.05, description="contrastive \u03b1",
                                           **slider)
        self.seed = W.IntText(0, description="seed", style=LABELS, layout=W.Layout(width="auto", flex="1 1 200px"))
        self.fixed_seed = W.Checkbox(False, description="fixed seed", indent=False, layout=W.Layout(width="auto"))
        self.stop_strings = W.Text("", description="stop strings", placeholder="separate with | ; \\n is a newline",
                                   style=LABELS, layout=W.Layout(width="auto"))
        self.save_link = W.HTML()
        self.save_link.add_class("opt-save-settings")
        self.load_file = W.FileUpload(accept=".json", multiple=False, description="Load settings",
                                      layout=W.Layout(width="auto"))
        self.load_file.add_class("opt-load-settings")
        for name, control in self._named().items():
            control.add_class(f"opt-{name.replace('_', '-')}")
            explain(control, TIPS[name])
        self.controls = [self.max_new_tokens, self.do_sample, self.temperature, self.top_k, self.top_p,
                         self.typical_p, self.repetition_penalty, self.no_repeat_ngram_size, self.num_beams,
                         self.penalty_alpha, self.seed, self.fixed_seed, self.stop_strings]
        self.panel = W.VBox([self.preset, self.max_new_tokens, self.do_sample, *self.controls[2:10], W.HBox([self.seed, self.fixed_seed],
                             layout=ROW), self.stop_strings, W.HBox([self.save_link, self.load_file], layout=ROW)])
        self.panel.add_class("opt-settings")
        self.preset.observe(self._on_preset, names="value")
        for control in self.controls:
            control.observe(self._on_change, names="value")
        self.load_file.observe(self._on_file, names="value")
        self._apply_preset(self.preset.value)

    def _named(self) -> dict[str, W.DOMWidget]:
        named = {name: getattr(self, name) for name in (*FIELDS, "preset", "seed", "fixed_seed", "stop_strings")}
        return {**named, "save": self.save_link, "load": self.load_file}

    # ------------------------------------------------------------------------------------- reading, setting

    def settings(self) -> GenerationSettings:
        """The decoding settings the controls show (SettingsError if they cannot work together)."""
        stops = tuple(s.replace("\\n", "\n") for s in self.stop_strings.value.split("|") if s)
        return GenerationSettings(**{name: getattr(self, name).value for name in FIELDS}, stop=stops,
                                  seed=self.seed.value if self.fixed_seed.value else None)

    def show(self, settings: GenerationSettings, preset: str = "custom") -> None:
        """Set every control to `settings` (a seed it names becomes the fixed seed)."""
        with self._quiet:
            for name in FIELDS:
                getattr(self, name).value = getattr(settings, name)
            self.stop_strings.value = "|".join(s.replace("\n", "\\n") for s in settings.stop)
            if preset == "custom":
                self.fixed_seed.value = settings.seed is not None
                self.seed.value = settings.seed if settings.seed is not None else self.seed.value
            self.preset.value = preset
        self._refresh_save_link()

    def show_seed_used(self, seed: int | None) -> None:
        """After a run: the box shows the seed it used (drawn or fixed), without making the preset custom."""
        if seed is not None:
            with self._quiet:
                self.seed.value = seed

    def _apply_preset(self, name: str) -> None:
        self.show(PRESETS[name], preset=name)

    def _on_preset(self, change) -> None:
        if not self._quiet and change["new"] != "custom":
            self._apply_preset(change["new"])

    def _on_change(self, change) -> None:
        if self._quiet:
            return
        if self.preset.value != "custom":
            with self._quiet:
                self.preset.value = "custom"
        self._refresh_save_link()

    # ------------------------------------------------------------------------------------- settings files

    def settings_json(self) -> str:
        """The controls' settings as the JSON file 'Save settings' downloads."""
        stops = [s.replace("\\n", "\n") for s in self.stop_strings.value.split("|") if s]
        values = {name: getattr(self, name).value for name in FIELDS}
        values.update(stop=stops, seed=self.seed.value if self.fixed_seed.value else None)
        return json.dumps({"kind": FILE_KIND, "version": 1, "settings": values}, indent=2)

    def load_settings_json(self, text: str) -> bool:
        """Set the controls from a saved settings file; False (after saying what is wrong) if it is not one."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("kind") != FILE_KIND or not isinstance(data.get("settings"), dict):
                raise ValueError("it is not a settings file saved by the playground")
            known = {f.name for f in fields(GenerationSettings)}
            unknown = sorted(set(data["settings"]) - known)
            if unknown:
                raise ValueError(f"it names settings this version does not have: {', '.join(unknown)}")
            settings = GenerationSettings(**data["settings"])
        except (ValueError, TypeError, HelpersError) as exc:
            self._say(f"That settings file cannot be used: {exc}. Save one with 'Save settings'.", "error")
            return False
        self.show(settings)
        self._say("Settings loaded.", "info")
        return True

    def _on_file(self, change) -> None:
        value = change["new"]
        files = list(value.values()) if isinstance(value, dict) else list(value)  # ipywidgets 7: a dict by name
        if files:
            self.load_settings_json(bytes(files[0]["content"]).decode("utf-8", errors="replace"))

    def _refresh_save_link(self) -> None:
        data = base64.b64encode(self.settings_json().encode()).decode()
        self.save_link.value = (f'<a class="opt-link-button" download="opt-settings.json" '
                                f'href="data:application/json;base64,{data}" title="{TIPS["save"]}">'
                                "\u2b07 Save settings</a>")
