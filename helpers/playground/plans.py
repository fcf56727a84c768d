"""The Plan picker's choices: the memory plans a model can load with on this machine, with the planner's figures."""

from __future__ import annotations

from .. import environment
from ..errors import HelpersError
from ..loading.adapters import is_adapter
from ..loading.sources import resolve_source, size_of
from ..memory.planner import Budget, Option, plan
from ..opt.sizes import OPTSize, find_size
from ..serving.urls import is_server_url
from ..units import human_bytes
from .random_model import RANDOM
from .random_model import SIZE as RANDOM_SIZE

AUTO = "auto"


def plan_label(option: Option) -> str:
    """'int8-weights-cpu · 1.5 GiB RAM · ~70 tok/s · near-exact (8-bit weights)': what it costs and gives, the
    figures first (a closed picker shows the start)."""
    memory = f"{human_bytes(option.gpu_bytes)} GPU" if option.gpu_bytes else f"{human_bytes(option.cpu_bytes)} RAM"
    return f"{option.plan} \u00b7 {memory} \u00b7 ~{option.tokens_per_second:.0f} tok/s \u00b7 {option.quality}"


def plan_choices(name: str, env: environment.Environment | None = None) -> list[tuple[str, str]]:
    """(label, plan) for the picker: 'auto', labelled with the plan it picks here, then every plan that fits and
    runs here, best first. 'auto' alone where the model's shape is not known without a download (a hub id not
    downloaded yet), nothing is loaded here (a served model), or an adapter decides (it loads merged)."""
    size = _shape(name)
    if size is None:
        return [(AUTO, AUTO)]
    options = [o for o in plan(size, Budget.of_machine(env or environment.detect())) if o.fits and o.available]
    best = next((o for o in options if o.usable), None)
    auto = f"{AUTO} ({best.plan})" if best is not None else AUTO
    return [(auto, AUTO)] + [(plan_label(o), o.plan) for o in options]


def _shape(name: str) -> OPTSize | None:
    if name == RANDOM:
        return RANDOM_SIZE
    if is_server_url(name):
        return None
    size = find_size(name)
    if size is not None:
        return size
    try:
        if not resolve_source(name)[1] or is_adapter(name):
            return None
        return size_of(name)
    except HelpersError:  # loading it will say what is wrong
        return None
