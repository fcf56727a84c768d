"""Shared fixtures: tiny random OPT models in both layouts, OPT's real tokenizer, the hub switched off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the tests may reach the network: hub paths are exercised with local folders and with the
# hub forced offline (a test that needs another setting patches the environment itself).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OPT_SHARED_DIR", REPO.parent / "shared"))
SHARED_TOKENIZER = SHARED / "opt-tokenizer"

VARIANTS = ["pre-ln", "post-ln"]


@pytest.fixture(scope="session")
def tokenizer():
    from helpers.opt.tokenizer import opt_tokenizer

    return opt_tokenizer()


@pytest.fixture(scope="session")
def shared_tokenizer_dir() -> Path:
    if not (SHARED_TOKENIZER / "vocab.json").is_file():
        pytest.skip(f"OPT's vocabulary is not at {SHARED_TOKENIZER} (set OPT_SHARED_DIR to the shared folder)")
    return SHARED_TOKENIZER


@pytest.fixture(scope="session", params=VARIANTS)
def variant(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny(variant):
    """A tiny random OPT of each layout (pre-LN; 350M-style post-LN with project_in/out)."""
    from tiny_models import tiny_model

    return tiny_model(variant)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, variant) -> Path:
    """A saved tiny model folder (safetensors + tokenizer) of each layout."""
    from tiny_models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp(f"tiny-{variant}"), variant)


@pytest.fixture(scope="session")
def tiny_pre_folder(tmp_path_factory) -> Path:
    from tiny_models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-pre-ln"), "pre-ln")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (fixtures use it to save evidence of a failure)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
