"""`finetune()`: a LoRA adapter trained with peft on transformers' `Trainer`, checkpointed, resumable, stoppable."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..errors import ModelUnloadedError, OutputWriteError, SettingsError
from ..generation.backends.base import RunControl
from ..loading.model import LoadedModel, load_model
from ..loading.sources import size_of
from ..memory.measure import PeakMemory
from ..memory.training_plan import choose_training, plan_training
from ..opt.tokenizer import opt_tokenizer
from ..signals import ctrl_c_held
from .callbacks import StopRequest, TrainingMonitor
from .data import TrainingData, prepare_data
from .lora import PLAN_CHOICES, TrainingPlan, check_hyperparameters, get_plan, trainable_parameters, with_adapter
from .output import (
    CHECKPOINTS,
    MERGED,
    check_output,
    disk_full_message,
    is_ours,
    latest_checkpoint,
    save_whole,
    write_mark,
)
from .result import FinetuneResult, TrainingProgress, perplexity
from .trainer import Blocks, make_trainer, resumed_settings


def finetune(model: str | os.PathLike | LoadedModel, data: str | os.PathLike | Sequence[str] | TrainingData,
             out: str | os.PathLike, *, plan: str = "auto", steps: int = 200, seq_len: int = 512,
             lr: float = 2e-4, rank: int = 16, alpha: int | None = None, batch_size: int = 4,
             resume: bool = False, seed: int = 0, merge: bool = False,
             on_progress: Callable[[TrainingProgress], None] | None = None,
             control: RunControl | None = None) -> FinetuneResult:
    """Train a LoRA adapter for an OPT model on your text and save it in peft's format in `out`.

    Args:
        model: an OPT size, hub id or folder (loaded with the plan), or a `LoadedModel` (trained as it is loaded;
            its LoRA layers are taken out again at the end, unless `merge`, which leaves it merged).
        data: a text file, a .jsonl file, a folder, a hub data set id or a list of strings (see
            `helpers.finetune.data.prepare_data`), or a `TrainingData` already prepared.
        out: the adapter's folder (new, empty, or an earlier run's with `resume`); checkpoints go in out/checkpoints.
        plan: 'lora-fp16', 'lora-int8', 'qlora-nf4' (a CUDA GPU), 'lora-fp32' (the CPU) or 'auto' (the planner's).
        steps, lr, rank, alpha, batch_size, seq_len, seed: the training's settings (alpha: twice the rank).
        resume: go on from the last checkpoint in out/checkpoints; with the same settings and seed the adapter
            ends as an uninterrupted run's would.
        merge: also write the base model with the adapter merged into it to out/merged (fp16/fp32 plans).
        on_progress: called after each step and evaluation, on this thread.
        control: its `stop()` (from any thread) ends training after the step under way; the adapter is saved.

    Returns:
        A `FinetuneResult` (held-out loss before and after, tokens/s, peak memory, the adapter's folder).

    Raises:
        SettingsError: a setting out of range, or a plan this machine cannot run.
        OutputWriteError: `out` holds other files, or the disk is full; nothing of yours is changed.
        MemoryBudgetError: the planner says the plan does not fit.
    """
    check_hyperparameters(lr, rank, alpha, steps, batch_size)
    if plan not in PLAN_CHOICES:
        raise SettingsError(f"Unknown training plan {plan!r}: choose one of {', '.join(PLAN_CHOICES)}.")
    out = Path(out).expanduser()
    check_output(out, resume)
    settings = {"rank": rank, "alpha": 2 * rank if alpha is None else alpha, "batch_size": batch_size, "seed": seed}
    if resume and is_ours(out):
        resumed_settings(out, settings)
    given = model if isinstance(model, LoadedModel) else None
    chosen = _plan_for_loaded(given, plan) if given is not None else _choose_plan(
        str(model), plan, seq_len=seq_len, batch_size=batch_size, rank=rank)
    if merge and chosen.quantized:
        raise SettingsError(f"merge needs the base model's full weights, and {chosen.name} holds them in "
                            f"{'8' if chosen.name == 'lora-int8' else '4'} bits: train with merge off, then merge the "
                            "adapter into the model loaded in fp16 (helpers.finetune.adapters.merge_adapter).")
    if not isinstance(data, TrainingData):  # before the weights load: a bad file is found at once
        tokenizer = given.tokenizer if given is not None else opt_tokenizer()  # every OPT size shares it
        data = prepare_data(data, tokenizer, seq_len=seq_len, seed=seed)
    loaded = given if given is not None else load_model(str(model), plan=chosen.load_plan)
    try:
        return _train(loaded, data, out, chosen, settings, steps=steps, lr=lr, resume=resume, merge=merge,
                      on_progress=on_progress, control=control)
    finally:
        if given is None:
            loaded.unload()


def _choose_plan(model: str, plan: str, *, seq_len: int, batch_size: int, rank: int) -> TrainingPlan:
    """The planner's choice ('auto'), or the plan named once the planner says it fits; a plan this machine
    cannot run is refused."""
    if plan != "auto":  # a plan this machine cannot run says so before the planner's memory figures
        _check_runs_here(get_plan(plan))
    options = plan_training(size_of(model), seq_len=seq_len, batch_size=batch_size, rank=rank)
    chosen = get_plan(choose_training(options, plan, model=model).plan)
    _check_runs_here(chosen)
    return chosen


def _check_runs_here(plan: TrainingPlan) -> None:
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"{plan.name} trains on a CUDA GPU, and this machine has none: use lora-fp32 (the CPU; "
                            "slow beyond the smallest models) or run on a GPU runtime (Colab: Runtime > Change "
                            "runtime type > T4 GPU).")
    if plan.quantized:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise SettingsError(f"{plan.name} needs bitsandbytes: pip install bitsandbytes (the notebooks' setup "
                                "cell installs it on GPU runtimes), or use lora-fp16.") from None


def _plan_for_loaded(loaded: LoadedModel, plan: str) -> TrainingPlan:
    """The plan a model already loaded trains with: how it is loaded decides."""
    model = loaded.model
    if model is None:
        raise ModelUnloadedError.after()
    quantized = "lora-int8" if getattr(model, "is_loaded_in_8bit", False) else (
        "qlora-nf4" if getattr(model, "is_loaded_in_4bit", False) else None)
    on_gpu = next(model.parameters()).device.type == "cuda"
    name = quantized or ("lora-fp16" if on_gpu else "lora-fp32")
    if plan not in ("auto", name):
        raise SettingsError(f"This model is loaded for {name}, so it cannot train with {plan}: pass its name instead "
                            f"of the loaded model (finetune({loaded.info.name!r}, ..., plan={plan!r})), or plan 'auto'.")
    chosen = get_plan(name)
    _check_runs_here(chosen)
    return chosen


def _train(loaded: LoadedModel, data, out: Path, plan: TrainingPlan, settings: dict, *, steps: int, lr: float,
           resume: bool, merge: bool, on_progress, control) -> FinetuneResult:
    base = loaded.model
    device = torch.device("cuda" if plan.device == "cuda" else "cpu")
    checkpointing = device.type == "cuda"
    out.mkdir(parents=True, exist_ok=True)
    facts = {"base_model": loaded.info.source, "plan": plan.name, "seq_len": data.seq_len, **settings}
    write_mark(out, {"status": "training", "settings": facts})
    import transformers

    transformers.set_seed(settings["seed"])  # the adapter's initial weights
    trainable = [(p, p.requires_grad) for p in base.parameters()]
    peft_model = with_adapter(base, plan, settings["rank"], settings["alpha"], checkpointing)
    stop = StopRequest(control)
    monitor = TrainingMonitor(stop, settings["batch_size"] * data.seq_len, steps, on_progress)
    trainer = make_trainer(peft_model, Blocks(data.train), Blocks(data.held_out), out / CHECKPOINTS, monitor,
                           steps=steps, lr=lr, batch_size=settings["batch_size"], seed=settings["seed"],
                           device=device, checkpointing=checkpointing, fp16=plan.device == "cuda")
    checkpoint = latest_checkpoint(out) if resume else None
    interrupted = False
    try:
        loss_before = trainer.evaluate()["eval_loss"]
        with PeakMemory(device) as peak:
            try:
                with ctrl_c_held(stop.ctrl_c):  # a first Ctrl-C stops after the step under way, with a checkpoint
                    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
            except KeyboardInterrupt:  # a second Ctrl-C: the adapter so far is saved below, the last checkpoint kept
                interrupted = True
            except OSError as exc:
                message = disk_full_message(exc, out)
                if message is None:
                    raise
                raise OutputWriteError(message) from exc
        done, seconds = trainer.state.global_step, monitor.train_seconds
        interrupted = interrupted or done < steps
        peft_model.eval()
        save_whole(peft_model.save_pretrained, out)  # the adapter so far, whatever stopped the training
        loss_after = trainer.evaluate()["eval_loss"]
        trained = trainable_parameters(peft_model)
        merged = _save_merged(peft_model, loaded, out) if merge and not interrupted else None
    finally:
        if not merge or interrupted:
            peft_model.unload()  # takes the LoRA layers out: the model given is as it was
        _restore(base, trainable, checkpointing)
    tokens = monitor.steps_done(trainer.state) * settings["batch_size"] * data.seq_len
    result = FinetuneResult(
        adapter_dir=out, plan=plan.name, steps=done, total_steps=steps, interrupted=interrupted,
        loss_before=loss_before, loss_after=loss_after, perplexity_before=perplexity(loss_before),
        perplexity_after=perplexity(loss_after), train_tokens=tokens,
        tokens_per_second=tokens / seconds if seconds > 0 else 0.0, peak_memory_bytes=peak.bytes,
        trainable_parameters=trained, merged_dir=merged)
    write_mark(out, {"status": "stopped" if interrupted else "done", "settings": facts, "result": result.as_dict()})
    return result


def _save_merged(peft_model, loaded: LoadedModel, out: Path) -> Path:
    merged = peft_model.merge_and_unload()

    def save(folder: Path) -> None:
        merged.save_pretrained(folder / MERGED)
        loaded.tokenizer.save_pretrained(folder / MERGED)

    save_whole(save, out, (MERGED,))
    return out / MERGED


def _restore(base: torch.nn.Module, trainable: list, checkpointing: bool) -> None:
    """The base model back as it was: inference mode, no gradient checkpointing or input-gradient hook."""
    if checkpointing:
        base.gradient_checkpointing_disable()
        base.disable_input_require_grads()
    for parameter, flag in trainable:
        parameter.requires_grad_(flag)
    base.eval()
