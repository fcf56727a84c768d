"""GenerationSettings rejects impossible values with messages that say what to do."""

import math

import pytest

from helpers.errors import SettingsError
from helpers.generation.settings import PRESETS, GenerationSettings


@pytest.mark.parametrize("field, value, words", [
    ("max_new_tokens", 0, "at least 1"), ("max_new_tokens", 2.5, "whole number"), ("max_new_tokens", "10", "whole"),
    ("temperature", 0, "greedy"), ("temperature", -1.0, "above 0"), ("temperature", math.nan, "above 0"),
    ("temperature", 1e-9, "between"), ("temperature", 1e9, "uniform noise"), ("repetition_penalty", 1e6, "between"),
    ("temperature", math.inf, "above 0"), ("top_k", -1, "0 to switch it off"), ("top_p", 0, "above 0"),
    ("top_p", 1.5, "at most 1"), ("typical_p", 0.0, "above 0"), ("repetition_penalty", 0, "between 0.01"),
    ("no_repeat_ngram_size", -2, "whole number"), ("num_beams", 0, "at least 1"), ("penalty_alpha", 1.5, "between 0 and 1"),
    ("seed", -1, "seed"), ("seed", 1.5, "seed"), ("do_sample", "yes", "True or False"), ("stop", ("",), "non-empty"),
    ("min_new_tokens", -1, "at least 0"), ("top_k", True, "whole number"),
])
def test_impossible_values_are_rejected_with_the_field_named(field, value, words):
    with pytest.raises(SettingsError, match=field) as info:
        GenerationSettings(**{field: value})
    assert words in str(info.value)


def test_combinations_that_cannot_work():
    with pytest.raises(SettingsError, match="top_k to 2 or more"):
        GenerationSettings(do_sample=False, penalty_alpha=0.6, top_k=0)
    with pytest.raises(SettingsError, match="deterministic"):
        GenerationSettings(do_sample=True, penalty_alpha=0.6, top_k=4)
    with pytest.raises(SettingsError, match="cannot exceed"):
        GenerationSettings(max_new_tokens=5, min_new_tokens=6)


def test_modes_follow_from_the_fields():
    assert GenerationSettings().mode == "sample"
    assert GenerationSettings.greedy().mode == "greedy"
    assert GenerationSettings(do_sample=False, num_beams=4).mode == "beam"
    assert GenerationSettings(num_beams=4).mode == "beam-sample"
    assert GenerationSettings(do_sample=False, penalty_alpha=0.6, top_k=4).mode == "contrastive"


def test_replace_validates_and_refuses_unknown_fields():
    s = GenerationSettings.greedy(max_new_tokens=30)
    assert s.replace(max_new_tokens=5).max_new_tokens == 5 and s.max_new_tokens == 30
    with pytest.raises(SettingsError, match="temprature"):
        s.replace(temprature=1.0)
    with pytest.raises(SettingsError):
        s.replace(top_p=2.0)


def test_stop_accepts_a_string_or_a_list():
    assert GenerationSettings(stop="\n").stop == ("\n",)
    assert GenerationSettings(stop=["a", "b"]).stop == ("a", "b")
    assert GenerationSettings(stop=None).stop == ()


def test_presets_are_valid_and_cover_the_modes():
    assert {p.mode for p in PRESETS.values()} == {"greedy", "sample", "contrastive"}
    assert PRESETS["the tutorial's greedy"].max_new_tokens == 30
    with pytest.warns(DeprecationWarning, match="the tutorial's greedy"):
        assert PRESETS["the seed's greedy"] is PRESETS["the tutorial's greedy"]  # its first label still works
    assert "the seed's greedy" not in list(PRESETS)  # but is not offered twice


def test_generation_config_carries_the_settings():
    config = GenerationSettings(temperature=0.5, top_k=40, top_p=0.8, stop=("\n",), max_new_tokens=12).generation_config()
    assert (config.temperature, config.top_k, config.top_p, config.max_new_tokens) == (0.5, 40, 0.8, 12)
    assert config.stop_strings == ["\n"] and config.do_sample and config.eos_token_id == 2
    greedy = GenerationSettings.greedy().generation_config()
    assert not greedy.do_sample and greedy.temperature is None


def test_effective_is_deprecated_and_still_drops_what_does_not_act():
    with pytest.warns(DeprecationWarning, match="effective"):
        assert "temperature" not in GenerationSettings.greedy().effective()
    with pytest.warns(DeprecationWarning):
        assert GenerationSettings().effective()["mode"] == "sample"
