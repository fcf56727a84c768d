"""The playground's plan picker: the memory plans a model can load with here, with the planner's figures; picking
one reloads the model with it, and a plan that cannot load leaves the working one."""

from dataclasses import replace

import pytest
import torch
from tiny_models import save_tiny_model

from helpers import environment
from helpers.errors import ModelLoadError
from helpers.generation.backends.cpu_int8 import Int8WeightLinear
from helpers.loading import apply_plan
from helpers.memory.planner import Budget, plan
from helpers.playground.app import Playground
from helpers.playground.plans import plan_choices, plan_label
from helpers.playground.random_model import RANDOM
from helpers.playground.random_model import SIZE as RANDOM_SIZE

CPU_PLANS = {"fp32-cpu", "bf16-cpu", "int8-cpu", "int8-weights-cpu"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("plans") / "pre", "pre-ln", seed=1))


@pytest.fixture
def app(folder):
    pg = Playground(model=folder)  # device and dtype auto: the plan decides
    pg.max_new_tokens.value = 4
    pg.wait()
    yield pg
    pg.wait()
    if pg.loaded is not None:
        pg.loaded.unload()


def choices(pg) -> dict[str, str]:
    return {value: label for label, value in pg.plan_picker.options}


def test_the_plan_picker_lists_the_cpu_plans_with_their_figures(app):
    labels = choices(app)
    assert CPU_PLANS <= set(labels) and list(labels)[0] == "auto"
    assert labels["auto"] == "auto (fp32-cpu)"  # exact unless the user asks
    assert app.plan_picker.value == "auto" and app.loaded_plan == "auto"
    assert app.loaded.model.dtype == torch.float32 and app.loaded.info.plan.plan == "fp32-cpu"
    for name in CPU_PLANS:
        assert labels[name].startswith(f"{name} \u00b7 ") and " RAM \u00b7 ~" in labels[name], labels[name]
        assert " tok/s \u00b7 " in labels[name]
    assert "8-bit weights" in labels["int8-weights-cpu"] and "exact (bf16)" in labels["bf16-cpu"]
    assert app.plan_picker in app.widget.children[1].children  # in the model row, beside the model picker


def test_picking_a_plan_reloads_the_model_with_it_and_generates(app):
    app.plan_picker.value = "bf16-cpu"
    app.wait()
    assert app.loaded_plan == "bf16-cpu" and app.loaded.info.plan.plan == "bf16-cpu"
    assert app.loaded.model.dtype == torch.bfloat16 and "bf16" in app.model_status.value
    app.generate()
    assert len(app.runs[-1].result.token_ids) == 4 and app.runs[-1].result.method == "cpu-fast"
    app.plan_picker.value = "int8-weights-cpu"
    app.wait()
    assert isinstance(app.loaded.model.lm_head, Int8WeightLinear) and app.loaded_plan == "int8-weights-cpu"
    app.plan_picker.value = "auto"
    app.wait()
    assert app.loaded.model.dtype == torch.float32 and app.loaded_plan == "auto"


def test_a_plan_that_cannot_load_leaves_the_working_one(app, monkeypatch):
    app.plan_picker.value = "bf16-cpu"
    app.wait()
    working = app.loaded.model

    def refused(*args, **kwargs):
        raise ModelLoadError("int8 refused by the test")

    monkeypatch.setattr(apply_plan, "quantize_dynamic_int8", refused)
    app.plan_picker.value = "int8-cpu"
    app.wait()
    assert "refused by the test" in app.message.value
    assert app.loaded.model is working and app.loaded_plan == "bf16-cpu" and app.plan_picker.value == "bf16-cpu"
    app.generate()
    assert len(app.runs[-1].result.token_ids) == 4


def test_another_model_keeps_the_plan_where_it_has_it(app, folder, tmp_path):
    other = str(save_tiny_model(tmp_path / "post", "post-ln", seed=2))
    app.plan_picker.value = "bf16-cpu"
    app.wait()
    app.models.path.value = other  # typed beside the picker: it joins the picker and loads
    app.wait()
    assert app.loaded_name == other and app.loaded_plan == "bf16-cpu" and app.loaded.model.dtype == torch.bfloat16
    assert app.plan_picker.value == "bf16-cpu"


def test_with_a_device_or_dtype_asked_for_there_is_no_plan_picker(folder):
    pg = Playground(model=folder, device="cpu", load=False)
    assert pg.plan_picker.layout.display == "none"


def test_plan_choices_of_sizes_random_weights_and_served_models():
    sizes = dict((value, label) for label, value in plan_choices("opt-125m"))
    options = {o.plan: o for o in plan("opt-125m", Budget.of_machine())}
    assert sizes["bf16-cpu"] == plan_label(options["bf16-cpu"])  # the planner's own figures
    assert set(dict(plan_choices(RANDOM)).values()) >= CPU_PLANS and RANDOM_SIZE.name == "opt-random"
    assert plan_choices("http://127.0.0.1:9/v1") == [("auto", "auto")]  # a served model: nothing loads here
    assert plan_choices("facebook/opt-nothing-here") == [("auto", "auto")]  # not downloaded: no shape to plan
    twenty_gib = replace(environment.detect(), gpus=(), ram_available_bytes=20 * 1024**3, cpu_bf16=True)
    listed = dict((value, label) for label, value in plan_choices("opt-6.7b", twenty_gib))
    assert "fp32-cpu" not in listed and {"bf16-cpu", "int8-weights-cpu"} <= set(listed)  # 27 GB in fp32 does not fit
    assert listed["auto"] == "auto (bf16-cpu)"
