"""The dtype table's torch-free half: imported without torch, the CLI's --dtype choices, the torch half built on it."""

import subprocess
import sys

import pytest
import torch

from helpers.memory.dtype_names import BYTES_PER_ELEMENT, DTYPE_ALIASES, DTYPE_CHOICES, FLOAT_DTYPES, STORAGE
from helpers.memory.dtypes import DTYPES, compute_bytes, dtype_name, resolve_dtype


def test_the_names_and_the_cli_parsers_that_use_them_import_no_torch():
    code = ("import argparse, sys\n"
            "import helpers.memory.dtype_names\n"
            "from helpers.cli.convert import add_convert_parser\n"
            "from helpers.cli.generate import add_generate_parser\n"
            "sub = argparse.ArgumentParser().add_subparsers()\n"
            "add_generate_parser(sub); add_convert_parser(sub)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", list(STORAGE))
def test_the_torch_table_is_the_names_table(name):
    compute, per = STORAGE[name]
    assert DTYPES[name] == (getattr(torch, compute), per) and BYTES_PER_ELEMENT[name] == per
    assert compute_bytes(name) == getattr(torch, compute).itemsize and dtype_name(name) == name


@pytest.mark.parametrize("choice", DTYPE_CHOICES)
def test_every_dtype_choice_resolves(choice):
    resolved = resolve_dtype(choice, "cpu")
    assert dtype_name(resolved) == ("float32" if choice == "auto" else choice) and dtype_name(resolved) in FLOAT_DTYPES


@pytest.mark.parametrize("alias", [*DTYPE_ALIASES, *FLOAT_DTYPES, "auto"])
def test_one_alias_table_any_case_for_every_reader(alias):
    """'FP16' once worked in dtype_name and failed in resolve_dtype (one lower-cased, the other not)."""
    for spelling in (alias, alias.upper(), alias.capitalize(), f" {alias} "):
        if alias == "auto":
            assert resolve_dtype(spelling, "cpu") == torch.float32
            continue
        name = dtype_name(spelling)
        assert name == dtype_name(alias) == DTYPE_ALIASES.get(alias, alias)
        if name in FLOAT_DTYPES:
            assert resolve_dtype(spelling, "cpu") == getattr(torch, name)
        else:  # a quantization is not a dtype to load in
            with pytest.raises(ValueError, match="Unknown dtype"):
                resolve_dtype(spelling, "cpu")
