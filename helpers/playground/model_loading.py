"""The playground's model: the picked one loaded, a working one kept when a switch fails, its status line."""

from __future__ import annotations

import html
import time
from collections.abc import Callable

import ipywidgets as W
import torch

from ..environment import resident_memory_bytes
from ..errors import ModelLoadError
from ..loading.model import LoadedModel
from ..units import human_bytes
from .jobs import Jobs
from .plans import AUTO, plan_choices
from .quiet import Quiet
from .random_model import RANDOM, RANDOM_LABEL, random_folder
from .state import Model, choice_for, free_bytes, needs_bytes, with_adapters
from .views import explain

OFFLINE_HINT = ("In the playground: type that folder in the box beside the model picker and press Enter, or serve it "
                "with `make playground MODEL=./opt-folder`. To try the app without weights, pick "
                f"\"{RANDOM_LABEL}\".")


class ModelLoading:
    """Owns the model picker (the sizes, any folder or hub id typed beside it, random weights), the plan picker
    (how the model is held in memory), the loading progress and the model's status line, and the model loaded
    (`loaded`, `loaded_name`, `loaded_plan`)."""

    def __init__(self, model: str, choices: list[Model], device: str, dtype: str,
                 loader: Callable[..., LoadedModel], jobs: Jobs):
        self.choices, self.device, self.dtype, self._loader, self._jobs = choices, device, dtype, loader, jobs
        self.loaded: LoadedModel | None = None
        self.loaded_name: str | None = None
        self.loaded_plan: str = AUTO
        self._quiet = Quiet()
        self.picker = W.Dropdown(options=self.options(), value=model, description="Model", style={"description_width": "50px"},
                                 layout=W.Layout(width="auto", flex="1 1 260px", min_width="0", max_width="560px"))
        self.picker.add_class("opt-model")
        explain(self.picker, "The model that writes. Sizes marked \u26a0 do not fit this machine; the label says how "
                             "a size would load here. Switching unloads the previous model.")
        self.path = W.Text(placeholder="or type a folder, hub id or server URL, then Enter", continuous_update=False,
                           layout=W.Layout(width="auto", flex="1 1 220px", min_width="0", max_width="420px"))
        self.path.add_class("opt-model-path")
        explain(self.path, "A model folder on this machine (./my-opt), or a hub id (facebook/opt-1.3b) or its "
                           "https://huggingface.co/ address; Enter adds it to the picker and loads it.")
        self.plan = W.Dropdown(options=plan_choices(model), value=AUTO, description="Plan",
                               style={"description_width": "50px"},
                               layout=W.Layout(width="auto", flex="1 1 220px", min_width="0", max_width="420px"))
        self.plan.add_class("opt-plan")
        explain(self.plan, "How the model is held in memory, with the planner's figures for this machine: auto is "
                           "exact (fp32 on a CPU, fp16 on a GPU) whenever it fits; bf16-cpu and int8-weights-cpu "
                           "read fewer bytes per token, faster, and round the weights. Changing it reloads the model.")
        if device != "auto" or dtype != "auto":  # a device and dtype asked for: they, not a plan, decide
            self.plan.layout.display = "none"
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="auto", flex="0 1 160px",
                                                                             display="none"))
        self.status = W.HTML()
        self.status.add_class("opt-model-status")
        self.picker.observe(self._on_pick, names="value")
        self.path.observe(self._on_path, names="value")
        self.plan.observe(self._on_plan, names="value")

    def options(self) -> list[tuple[str, str]]:
        return [(c.label, c.name) for c in self.choices] + [(RANDOM_LABEL, RANDOM)]

    # ------------------------------------------------------------------------------------- the picker

    def _on_pick(self, change) -> None:
        if self._quiet:
            return
        if self._jobs.refused():  # the picker keeps showing the model that is loaded
            self.show_picked(self.loaded_name or change["old"])
            return
        self._jobs.start(self.load, change["new"])

    def _on_plan(self, change) -> None:
        if self._quiet:
            return
        if self._jobs.refused():  # the plan picker keeps showing the plan loaded
            self.show_picked(self.loaded_name or self.picker.value)
            return
        self._jobs.start(self.load, self.picker.value)

    def _on_path(self, change) -> None:
        name = change["new"].strip().removeprefix("https://huggingface.co/").rstrip("/") if change["new"] else ""
        if not name:
            return
        if name not in {c.name for c in self.choices}:
            self.choices[:] = with_adapters([*self.choices, choice_for(name)], None)  # an adapter after its base
            with self._quiet:
                self.picker.options = self.options()
                self.picker.value = self.loaded_name or self.choices[0].name
        self.picker.value = name

    def pick(self, name: str) -> None:
        """Pick `name` as a user would (it loads, unless a job runs)."""
        self.picker.value = name

    def show_status(self, text: str) -> None:
        """The model status line (HTML), for jobs that load several models (side by side)."""
        self.status.value = text

    def show_picked(self, name: str) -> None:
        """Put the picker back on `name`, and the plan picker on the plan loaded where `name` has it (else auto),
        without loading anything."""
        choices = plan_choices(name)
        with self._quiet:
            self.picker.value = name
            self.plan.options = choices
            self.plan.value = self.loaded_plan if self.loaded_plan in {value for _, value in choices} else AUTO

    # ------------------------------------------------------------------------------------- loading

    def memory_text(self) -> str:
        if torch.cuda.is_available():
            return f"GPU memory {human_bytes(torch.cuda.memory_allocated())}"
        return f"RAM {human_bytes(resident_memory_bytes())}"

    def load(self, name: str) -> LoadedModel:
        """Load `name` as the playground's model. The working model stays loaded while the new one loads
        when both fit, else it goes first; if the new one fails, the old one is what is left (loaded back
        when it had gone), the picker shows it and the status says what happened. It loads with the plan
        picker's plan where `name` can have it, else with auto."""
        plan = self._plan_for(name)
        if (self.loaded is not None and self.loaded_name == name and self.loaded_plan == plan
                and self.loaded.model is not None):
            return self.loaded
        previous, previous_name = self.loaded, self.loaded_name
        if previous is not None and previous.model is None:
            previous = previous_name = None
        if previous is not None and self.needs_bytes(name) > self.budget_bytes():
            previous.unload()
            self.loaded = None
        try:
            new = self.load_one(name, plan)
        except BaseException as exc:
            if previous_name is None:
                self.status.value = (f"<b>{html.escape(self.label(name))}</b> did not load: no model is loaded. "
                                     f"Without weights here, pick \u201c{RANDOM_LABEL}\u201d to try the app.")
                raise
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            if previous.model is None:  # it made room for the new one: load it back
                self.loaded = self.load_one(previous_name, self.loaded_plan)
                kept = "loaded back"
            else:
                self.loaded = previous
                kept = "still loaded"
            self.loaded_name = previous_name
            self.show_picked(previous_name)
            self.status.value = (f"Loading <b>{html.escape(self.label(name))}</b> {reason}; <b>{html.escape(self.label(previous_name))}"
                                 f"</b> is {kept}: {self._facts(self.loaded)}; {self.memory_text()}")
            raise
        if previous is not None and previous.model is not None:
            previous.unload()
        self.loaded, self.loaded_name, self.loaded_plan = new, name, plan
        self.show_picked(name)
        self.status.value = f"<b>{html.escape(self.label(name))}</b>: {self._facts(new)}; {self.memory_text()}"
        return new

    def _plan_for(self, name: str) -> str:
        """The plan picker's plan where `name` can load with it here, else auto."""
        return self.plan.value if self.plan.value in {value for _, value in plan_choices(name)} else AUTO

    @staticmethod
    def _facts(loaded: LoadedModel) -> str:
        """The loaded model's summary without its name and folder (the picker and the status name it)."""
        return html.escape(loaded.info.summary().split(": ", 1)[-1])

    def load_beside(self, name: str) -> LoadedModel:
        """Load `name` beside the playground's own model (side by side), without making it the playground's."""
        return self._loader(str(random_folder()) if name == RANDOM else name, device=self.device, dtype=self.dtype,
                            **self._adapter_arguments(name))

    def load_one(self, name: str, plan: str = AUTO) -> LoadedModel:
        """Call the loader (random weights built first) with `plan` (auto: the loader's own choice), the progress
        bar and the status line following it."""
        self.status.value = f"Loading <b>{html.escape(self.label(name))}</b> \u2026 ({self.memory_text()} before)"
        self.progress.value, self.progress.max = 0, 1
        self.progress.layout.display = "flex"
        start = time.perf_counter()

        def report(stage: str, done: int, total: int | None) -> None:
            if total:
                self.progress.max, self.progress.value = total, min(done, total)
            self.status.value = (f"Loading <b>{html.escape(self.label(name))}</b>: {html.escape(stage)} {done}"
                                 f"{f'/{total}' if total else ''} ({time.perf_counter() - start:.0f} s)")

        try:
            source = str(random_folder(lambda: report("building random weights", 0, None))) if name == RANDOM else name
            planned = {} if plan == AUTO else {"plan": plan}  # a plan is asked for only with device and dtype auto
            return self._loader(source, device=self.device, dtype=self.dtype, progress=report,
                                **planned, **self._adapter_arguments(name))
        except ModelLoadError as exc:
            if str(exc).startswith("Could not get"):  # offline: say how to use a folder here
                raise ModelLoadError(f"{exc} {OFFLINE_HINT}") from None
            raise
        finally:
            self.progress.layout.display = "none"

    def _adapter_arguments(self, name: str) -> dict:
        """An adapter's choice loads its base with it, merged into unquantized weights (the CPU engine's speed)."""
        return {"merge": "auto"} if any(c.name == name and c.base is not None for c in self.choices) else {}

    def label(self, name: str) -> str:
        """The name to show: an adapter's 'base + adapter', random weights' label, else the name itself."""
        if name == RANDOM:
            return RANDOM_LABEL
        return next((c.label for c in self.choices if c.name == name and c.base is not None), name)

    def needs_bytes(self, name: str) -> int:
        return needs_bytes(self.choices, name, self.device, self.dtype)

    def budget_bytes(self) -> int:
        return free_bytes(self.device)
