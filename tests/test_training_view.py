"""The fine-tuning notebook's live view: the bar, the figures and the loss curve follow `on_progress`."""

from types import SimpleNamespace

import pytest

from helpers.playground.training_view import TrainingView

PNG = b"\x89PNG"


def progress(step, loss=None, held_out_loss=None, total=10):
    """What finetune's TrainingProgress carries (the contract's fields)."""
    return SimpleNamespace(step=step, total_steps=total, loss=loss, held_out_loss=held_out_loss,
                           tokens_per_second=1234.5, elapsed_s=7.2)


def test_each_step_moves_the_bar_and_the_figures():
    view = TrainingView(10, title="tiny")
    view.update(progress(0, held_out_loss=4.5))
    assert bytes(view.plot.value).startswith(PNG)  # drawn at once: the curve starts with the loss before training
    view.update(progress(1, loss=4.25))
    assert view.bar.value == 1 and view.bar.max == 10 and view.bar.description == "step 1"
    assert view.status.value == "step 1/10 · loss 4.250 · 1,234 tokens/s · 7 s"
    assert view.train_loss == [(1, 4.25)] and view.held_out_loss == [(0, 4.5)]


def test_the_curve_is_redrawn_at_most_once_a_second_and_always_at_the_end():
    view = TrainingView(5, redraw_every_s=3600)
    view.update(progress(1, loss=3.0, total=5))
    first = view.plot.value
    view.update(progress(2, loss=2.0, total=5))
    assert view.plot.value == first  # within the interval: not redrawn
    view.update(progress(5, loss=1.0, held_out_loss=1.5, total=5))
    assert view.plot.value != first and bytes(view.plot.value).startswith(PNG)


@pytest.mark.parametrize("stopped, style", [(False, "success"), (True, "warning")])
def test_finish_says_how_it_ended(stopped, style):
    view = TrainingView(3)
    view.update(progress(1, loss=2.0, total=3))
    view.finish("held-out perplexity 90.0 -> 30.0 <saved>", stopped=stopped)
    assert view.bar.bar_style == style and view.status.value == "held-out perplexity 90.0 -&gt; 30.0 &lt;saved&gt;"
