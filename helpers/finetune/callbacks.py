"""Stop, Ctrl-C and progress during training: what asks it to stop, and the `TrainerCallback` that does."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from transformers import TrainerCallback

from ..generation.backends.base import RunControl
from ..signals import HeldInterrupt
from .result import TrainingProgress


class StopRequest:
    """Why training should stop at the next step boundary: the caller's `RunControl` (Stop), a first Ctrl-C
    (counted in `ctrl_c` while `helpers.signals.ctrl_c_held` holds it; a second one raises at once), or a
    KeyboardInterrupt raised by the progress hook."""

    def __init__(self, control: RunControl | None = None):
        self.control = control
        self.ctrl_c = HeldInterrupt(again_raises=True)
        self.interrupted = threading.Event()

    def request(self) -> None:
        self.interrupted.set()

    @property
    def requested(self) -> bool:
        return (self.ctrl_c.arrived or self.interrupted.is_set()
                or (self.control is not None and self.control.stopped))


class TrainingMonitor(TrainerCallback):
    """Stops the Trainer (with a checkpoint) when a stop is requested, and reports each step and evaluation."""

    def __init__(self, stop: StopRequest, tokens_per_step: int, total_steps: int,
                 on_progress: Callable[[TrainingProgress], None] | None = None):
        self.stop = stop
        self.total_steps = total_steps
        self.tokens_per_step = tokens_per_step
        self.on_progress = on_progress
        self.first_step: int | None = None  # the step this run started from (after a resume: the checkpoint's)
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.first_step = state.global_step
        self.started = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.ended = time.perf_counter()

    @property
    def train_seconds(self) -> float:
        """From the training's start to its end (or to now, where a KeyboardInterrupt cut it short)."""
        return (self.ended or time.perf_counter()) - self.started

    def steps_done(self, state) -> int:
        return state.global_step - (self.first_step or 0)

    def tokens_per_second(self, state) -> float:
        elapsed = self.train_seconds
        return self.steps_done(state) * self.tokens_per_step / elapsed if elapsed > 0 else 0.0

    def on_step_end(self, args, state, control, **kwargs):
        return self._maybe_stop(state, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])
            self._report(state, None)
        return self._maybe_stop(state, control)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_loss" in metrics:
            self._report(state, float(metrics["eval_loss"]))

    def _maybe_stop(self, state, control):
        if self.stop.requested and state.global_step < state.max_steps:
            control.should_training_stop = True
            control.should_save = True  # the Trainer writes a checkpoint of this step before it stops
        return control

    def _report(self, state, held_out_loss: float | None) -> None:
        if self.on_progress is None:
            return
        progress = TrainingProgress(step=state.global_step, total_steps=self.total_steps, loss=self.loss,
                                    held_out_loss=held_out_loss, tokens_per_second=self.tokens_per_second(state),
                                    elapsed_s=self.train_seconds)
        try:
            self.on_progress(progress)
        except KeyboardInterrupt:  # raised by the hook (a widget's interrupt): stop here, with a checkpoint
            self.stop.request()
