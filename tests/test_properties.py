"""Property-based tests: any prompt and any settings give a result or a clear HelpersError (a ValueError
with a message for people), never a traceback from deep inside a library; through generate(), stream(),
the command line and the playground's handlers."""

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from helpers.cli.main import main
from helpers.errors import HelpersError, PromptError, SettingsError
from helpers.generation.run import generate
from helpers.generation.settings import GenerationSettings
from helpers.generation.streaming import stream

EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text as people paste it: any code point (control characters, emoji, right-to-left marks, combining
# marks, lone surrogates from broken copy and paste), blank text, and text far beyond the context.
any_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=200)
prompts = st.one_of(
    any_text,
    st.sampled_from(["", " ", "\n\n\t", "\x00", "\u202eevil\u202c", "🙂" * 50, "e\u0301" * 100, "\ud800 broken",
                     "</s>", "</s></s>hello", "<pad>", "word " * 2100]),
    st.builds(lambda w, n: (w + " ") * n, st.sampled_from(["hello", "数据", "🙂"]), st.integers(1, 1200)),
)
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**12))
field_values = {
    "max_new_tokens": st.one_of(st.integers(-5, 3000), st.floats(allow_nan=True), st.just("10")),
    "min_new_tokens": st.integers(-2, 20),
    "do_sample": st.one_of(st.booleans(), st.just("yes"), st.just(None)),
    "temperature": numbers,
    "top_k": st.one_of(st.integers(-3, 10**9), st.floats()),
    "top_p": numbers,
    "typical_p": numbers,
    "repetition_penalty": numbers,
    "no_repeat_ngram_size": st.integers(-2, 50),
    "num_beams": st.integers(-1, 4),
    "penalty_alpha": numbers,
    "seed": st.one_of(st.none(), st.integers(-5, 2**64)),
    "stop": st.one_of(st.none(), st.text(max_size=5), st.lists(st.text(max_size=4), max_size=3)),
}
any_settings = st.fixed_dictionaries({}, optional=field_values)


def _new_tokens_cap(fields: dict) -> dict:
    """Keep a run short: the properties are about inputs, not about waiting."""
    value = fields.get("max_new_tokens")
    if isinstance(value, int) and not isinstance(value, bool) and value > 6:
        fields["max_new_tokens"] = 6
    if isinstance(fields.get("min_new_tokens"), int) and fields["min_new_tokens"] > 6:
        fields["min_new_tokens"] = 6
    return fields


def _settings_or_error(fields: dict):
    try:
        return GenerationSettings(**_new_tokens_cap(fields))
    except SettingsError as exc:
        assert str(exc) and any(name in str(exc) for name in field_values), str(exc)
        return None


@EXAMPLES
@given(fields=any_settings)
def test_settings_are_valid_or_rejected_with_the_field_named(fields):
    _settings_or_error(fields)


@EXAMPLES
@given(prompt=prompts, fields=any_settings)
def test_generate_gives_a_result_or_a_clear_error(tiny, tokenizer, prompt, fields):
    chosen = _settings_or_error(fields)
    assume(chosen is not None)
    try:
        result = generate(tiny, tokenizer, prompt, chosen, truncate=len(prompt) % 2 == 0)
    except PromptError as exc:
        assert "prompt" in str(exc).lower()
        return
    assert result.prompt_token_ids[0] == 2 and 2 not in result.prompt_token_ids[1:2]
    assert len(result.token_ids) <= chosen.max_new_tokens
    assert result.finish_reason in ("length", "eos", "stop", "context")
    assert isinstance(result.text, str) and math.isfinite(result.timings.tokens_per_second)


@EXAMPLES
@given(prompt=prompts, stop_after=st.integers(0, 4))
def test_stream_pieces_join_to_the_text_and_stop_anywhere(tiny, tokenizer, prompt, stop_after):
    try:
        s = stream(tiny, tokenizer, prompt, GenerationSettings(max_new_tokens=6, seed=1), truncate=True)
    except PromptError:
        return
    pieces = []
    for piece in s:
        pieces.append(piece)
        if len(pieces) == stop_after:
            s.stop()
    assert "".join(pieces) == s.result.text


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=prompts, temperature=numbers, top_p=numbers, max_new=st.integers(-3, 5), greedy=st.booleans())
def test_command_line_exits_cleanly(tiny_pre_folder, capsys, prompt, temperature, top_p, max_new, greedy):
    assume("\x00" not in prompt)  # an argv string cannot hold a NUL byte
    args = ["generate", "--model", str(tiny_pre_folder), "--max-new-tokens", str(max_new), "--json"]
    args += ["--greedy"] if greedy else ["--temperature", repr(temperature), "--top-p", repr(top_p)]
    try:
        code = main([*args, "--", prompt])
    except SystemExit as exc:  # argparse's own usage errors ('-1e+16' reads as an option)
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    assert code in (0, 1, 2)
    if code:
        assert "error" in err.lower()
    else:
        assert '"token_ids"' in out


@pytest.fixture(scope="module")
def playground(tiny_pre_folder):
    from helpers.playground.app import Playground

    app = Playground(model=str(tiny_pre_folder), device="cpu")
    app.refresh_seconds = 0
    app.wait()
    return app


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=prompts, temperature=st.floats(0.05, 2.0), top_k=st.integers(0, 200), beams=st.integers(1, 3),
       alpha=st.sampled_from([0.0, 0.6]), stops=st.text(max_size=6))
def test_playground_handlers_never_break(playground, prompt, temperature, top_k, beams, alpha, stops):
    app = playground
    app.prompt.value = prompt
    app.temperature.value, app.top_k.value, app.num_beams.value = temperature, top_k, beams
    app.penalty_alpha.value, app.stop_strings.value, app.max_new_tokens.value = alpha, stops, 4
    app.generate_button.click()
    app.wait()
    assert not app.busy and not app.generate_button.disabled
    if app.last_error:
        assert "Something failed" not in app.last_error, app.last_error  # only errors that say what to do
    # and it still works afterwards
    app.prompt.value, app.penalty_alpha.value, app.num_beams.value, app.stop_strings.value = "Hello", 0.0, 1, ""
    app.generate()
    app.wait()
    assert app.runs[-1].result.token_ids and not app.last_error


def test_a_lone_surrogate_is_named(tiny, tokenizer):
    import re

    with pytest.raises(PromptError, match=re.escape("not valid Unicode ('\\ud800' at character 3")):
        generate(tiny, tokenizer, "ab \ud800 cd", max_new_tokens=2)


def test_helpers_errors_are_value_errors_with_messages():
    for error in (PromptError, SettingsError):
        assert issubclass(error, HelpersError) and issubclass(error, ValueError)
    assert torch.get_num_threads() >= 1
