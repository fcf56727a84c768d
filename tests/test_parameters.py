"""Notebook parameters checked before anything runs: one line naming the parameter and what it takes."""

import pytest

from helpers.generation.settings import GenerationSettings
from helpers.parameters import ParameterError, existing_folder, positive_int, settings_table, text_list


@pytest.mark.parametrize("value, says", [
    ([], "PROMPTS takes a list of one or more prompts (strings)"),
    ("Hello world", "not one string: 'Hello world' (str). Put it in brackets: ['Hello world']"),
    (["a", 3], "it is ['a', 3] (list)"),
    (None, "it is None (NoneType)"),
])
def test_a_prompt_list_that_cannot_work_is_named(value, says):
    with pytest.raises(ParameterError, match="^PROMPTS takes") as caught:
        text_list("PROMPTS", value)
    assert says in str(caught.value)


def test_a_prompt_list_too_short_for_the_notebook_says_how_many_it_needs():
    with pytest.raises(ParameterError, match=r"at least 2 prompts .*; it has 1\."):
        text_list("PROMPTS", ["only one"], at_least=2)
    assert text_list("PROMPTS", ("a", "b"), at_least=2) == ["a", "b"]
    assert text_list("MODELS", ["opt-125m"], what="models") == ["opt-125m"]


@pytest.mark.parametrize("value", [0, -3, 2.5, "30", True, None])
def test_a_count_must_be_a_whole_number_of_at_least_one(value):
    with pytest.raises(ParameterError, match="^MAX_NEW_TOKENS takes a whole number of at least 1"):
        positive_int("MAX_NEW_TOKENS", value)
    assert positive_int("MAX_NEW_TOKENS", 30) == 30


def test_a_folder_that_is_missing_or_a_file_is_named(tmp_path):
    (tmp_path / "a-file.json").write_text("{}")
    with pytest.raises(ParameterError, match="^RESULTS takes the path of a folder of results; '.*nowhere' does not exist"):
        existing_folder("RESULTS", str(tmp_path / "nowhere"), holding="results")
    with pytest.raises(ParameterError, match="a file, not a folder"):
        existing_folder("RESULTS", tmp_path / "a-file.json")
    with pytest.raises(ParameterError, match="it is 3 \\(int\\)"):
        existing_folder("RESULTS", 3)
    assert existing_folder("RESULTS", str(tmp_path)) == tmp_path
    (tmp_path / "clone" / "results-here").mkdir(parents=True)
    assert existing_folder("RESULTS", "results-here", under=(tmp_path / "clone",)) == tmp_path / "clone" / "results-here"


def test_a_strategies_table_becomes_settings_and_a_bad_row_is_named():
    table = settings_table("STRATEGIES", {"greedy": {"do_sample": False, "max_new_tokens": 5}, "top-p": {"top_p": 0.9}})
    assert table == {"greedy": GenerationSettings.greedy(5), "top-p": GenerationSettings(top_p=0.9)}
    with pytest.raises(ParameterError, match=r"^STRATEGIES\['x'\] has temprature, which GenerationSettings does not take"):
        settings_table("STRATEGIES", {"x": {"temprature": 0.7}})
    with pytest.raises(ParameterError, match=r"^STRATEGIES\['hot'\]: .*temperature"):
        settings_table("STRATEGIES", {"hot": {"temperature": -1.0}})
    for bad in ({}, ["greedy"], {"greedy": "do_sample=False"}):
        with pytest.raises(ParameterError, match="^STRATEGIES takes a dict of label -> settings"):
            settings_table("STRATEGIES", bad)


def test_a_notebook_shows_the_message_alone_without_a_traceback():
    error = ParameterError("PROMPTS takes a list")
    assert error._render_traceback_() == ["ParameterError: PROMPTS takes a list"]  # IPython's hook
    assert isinstance(error, ValueError)
