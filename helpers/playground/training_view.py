"""A fine-tuning run's live view: a progress bar, its figures, and the loss curve (training and held out)."""

from __future__ import annotations

import html
import io
import math
import time
from typing import TYPE_CHECKING

import ipywidgets as W

if TYPE_CHECKING:
    from ..finetune.result import TrainingProgress


class TrainingView:
    """Owns the widgets that show one training run. `update` is `finetune`'s `on_progress`: finetune calls it on
    the thread that runs the cell, so every change reaches the page while the cell runs (Colab shows widget
    updates only then). The curve is a PNG redrawn at most every `redraw_every_s` seconds, and at the end."""

    def __init__(self, total_steps: int, title: str = "", redraw_every_s: float = 1.0):
        self.bar = W.IntProgress(value=0, min=0, max=max(total_steps, 1), description="step 0",
                                 layout=W.Layout(width="45%"))
        self.status = W.HTML()
        self.plot = W.Image(format="png", layout=W.Layout(max_width="640px"))
        self.widget = W.VBox([W.HBox([self.bar, self.status]), self.plot])
        self.title = title
        self.train_loss: list[tuple[int, float]] = []
        self.held_out_loss: list[tuple[int, float]] = []
        self._redraw_every_s = redraw_every_s
        self._drawn_at = -math.inf

    def update(self, progress: TrainingProgress) -> None:
        """Show one step's (or one held-out evaluation's) figures."""
        self.bar.max = max(progress.total_steps, 1)
        self.bar.value = min(progress.step, self.bar.max)
        self.bar.description = f"step {progress.step}"
        if progress.loss is not None:
            self.train_loss.append((progress.step, progress.loss))
        if progress.held_out_loss is not None:
            self.held_out_loss.append((progress.step, progress.held_out_loss))
        self.status.value = html.escape(self.figures(progress))
        done = progress.step >= progress.total_steps
        if done or time.monotonic() - self._drawn_at >= self._redraw_every_s:
            self.draw()

    @staticmethod
    def figures(progress: TrainingProgress) -> str:
        """'step 12/200 · loss 3.214 · held-out 3.402 · 1,204 tokens/s · 41 s'."""
        parts = [f"step {progress.step}/{progress.total_steps}"]
        if progress.loss is not None:
            parts.append(f"loss {progress.loss:.3f}")
        if progress.held_out_loss is not None:
            parts.append(f"held-out {progress.held_out_loss:.3f}")
        parts += [f"{progress.tokens_per_second:,.0f} tokens/s", f"{progress.elapsed_s:.0f} s"]
        return " · ".join(parts)

    def finish(self, summary: str, stopped: bool = False) -> None:
        """The run's last word in the status line, the bar green (or amber when stopped early), the curve drawn."""
        self.bar.bar_style = "warning" if stopped else "success"
        self.status.value = html.escape(summary)
        self.draw()

    def draw(self) -> None:
        """Redraw the loss curve (matplotlib's Figure, no pyplot: nothing global, nothing shown twice)."""
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6.4, 3.0), dpi=80, layout="constrained")
        axes = figure.add_subplot()
        for points, label, style in ((self.train_loss, "training loss", "-"),
                                     (self.held_out_loss, "held-out loss", "o--")):
            if points:
                axes.plot(*zip(*points), style, label=label)
        axes.set(xlabel="step", ylabel="loss (nats per token)", title=self.title)
        if self.train_loss or self.held_out_loss:
            axes.legend(loc="upper right")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        self.plot.value = buffer.getvalue()
        self._drawn_at = time.monotonic()
