"""An adapter in the served playground (Voila, Chromium): listed in the picker as 'base + adapter', picked, loaded.
The screenshot lands in test-artifacts/browser/adapter-picker.png."""

from __future__ import annotations

import pytest
from test_adapters import make_adapter
from test_browser import browser, page_of, server_env, shot, voila, wait_loaded  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """test_browser's fixtures serve OPT_MODEL='mid' with OPT_EXTRA_MODELS='tiny': here a base and its adapter."""
    from tiny_models import save_tiny_model

    root = tmp_path_factory.mktemp("browser-adapters")
    base = save_tiny_model(root / "notes-base", "pre-ln", seed=3)
    return {"mid": str(base), "tiny": str(make_adapter(base, root / "finetuned" / "my-notes"))}


def test_the_picker_lists_an_adapter_and_loads_it(page_of, voila, models):  # noqa: F811  (test_browser's fixtures)
    page = page_of(1280, 800)
    page.goto(voila.url, timeout=120_000)
    wait_loaded(page)
    labels = page.eval_on_selector(".opt-model select", "s => [...s.options].map(o => o.text)")
    label = "notes-base\xa0+\xa0my-notes"  # ipywidgets shows an option's spaces as no-break spaces
    assert label in labels and labels.index(label) == labels.index(models["mid"]) + 1  # after its base
    page.select_option(".opt-model select", label=label)
    page.wait_for_function("() => /notes-base \\+ my-notes: .* loaded in .*, LoRA adapter \\(rank 4\\) merged in/.test("
                           "document.querySelector('.opt-model-status')?.innerText || '')", timeout=120_000)
    shot(page, "adapter-picker")
