"""The check's training job: a few LoRA steps under the budget, their speed and peak against the planner's."""

from __future__ import annotations

import importlib.util
import time

from .profile import Unavailable
from .run import log_line

# ------------------------------------------------------------------------------------------ the job


def _load(folder: str, storage: str, device: str):
    import torch
    from transformers import BitsAndBytesConfig, OPTForCausalLM

    if storage == "float32":
        return OPTForCausalLM.from_pretrained(folder, dtype=torch.float32)
    quantization = {"int8": BitsAndBytesConfig(load_in_8bit=True),
                    "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                              bnb_4bit_compute_dtype=torch.float16)}.get(storage)
    return OPTForCausalLM.from_pretrained(folder, dtype=torch.float16, device_map={"": 0},
                                          quantization_config=quantization)


def _prepare(model, storage: str, rank: int):
    """peft's recipe, as its OPT example: k-bit preparation (norms and embeddings in fp32) for 8/4-bit, gradient
    checkpointing, LoRA on q_proj and v_proj (adapter weights in fp32)."""
    import warnings

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    checkpointing = {"use_reentrant": False}
    if storage in ("int8", "nf4"):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs=checkpointing)
    else:
        with warnings.catch_warnings():  # transformers 5.24 renamed it; Colab's 5.15 has only this name
            warnings.simplefilter("ignore", FutureWarning)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    model.config.use_cache = False
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                                            lora_dropout=0.05, task_type="CAUSAL_LM"))


def job_train(folder: str, plan: str, gpu_memory: int | None, seq_len: int, batch: int, rank: int,
              steps: int) -> dict:
    """`steps` LoRA steps with plan `plan` on `folder` in this fresh process, capped at `gpu_memory` on a GPU:
    fits (or the memory it ran out of), steps/s and tokens/s after the first step, and the peak (memory
    allocated on the GPU, resident memory growth on the CPU) against `training_peak_bytes`."""
    import torch

    from helpers.memory.measure import PeakMemory, release_freed_memory
    from helpers.memory.training_plan import TRAINING_PLANS, training_peak_bytes
    from helpers.opt.sizes import size_from_config

    storage, device = TRAINING_PLANS[plan]
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise Unavailable("runs on cuda, not cpu")
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    if storage in ("int8", "nf4") and not bnb:
        raise Unavailable("needs bitsandbytes")
    if cuda and gpu_memory:
        torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_memory / torch.cuda.get_device_properties(0).total_memory), 0)
    optimizer_name = "paged_adamw_8bit" if cuda and bnb else "adamw"
    release_freed_memory()
    seconds: list[float] = []
    try:
        with PeakMemory("cuda:0" if cuda else "cpu") as peak:
            log_line(f"loading {folder} for {plan}")
            model = _prepare(_load(folder, storage, device), storage, rank)
            model.train()
            size = size_from_config(model.config)
            trainable = [p for p in model.parameters() if p.requires_grad]
            if optimizer_name == "paged_adamw_8bit":
                import bitsandbytes

                optimizer = bitsandbytes.optim.PagedAdamW8bit(trainable, lr=2e-4)
            else:
                optimizer = torch.optim.AdamW(trainable, lr=2e-4)
            scaler = torch.amp.GradScaler("cuda", enabled=cuda)
            ids = torch.randint(3, size.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
            ids = ids.to("cuda:0" if cuda else "cpu")
            losses = []
            for step in range(steps):
                start = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                    loss = model(input_ids=ids, labels=ids).loss
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())  # waits for the GPU
                seconds.append(time.perf_counter() - start)
                log_line(f"{plan} step {step + 1}/{steps}: loss {losses[-1]:.3f}, {seconds[-1]:.2f} s")
    except Exception as exc:  # out of memory, also where a library wraps it in its own error
        if not isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) and "out of memory" not in str(exc).lower():
            raise
        return {"plan": plan, "fits": False, "error": f"{type(exc).__name__}: {str(exc)[:600]}",
                "peak_before_failure_bytes": torch.cuda.max_memory_allocated(0) if cuda else None,
                "steps_done": len(seconds)}
    breakdown = training_peak_bytes(size, plan, seq_len=seq_len, batch_size=batch, rank=rank, optimizer=optimizer_name)
    predicted = breakdown["total"] - breakdown["overhead"]  # what the measurement sees
    timed = seconds[1:] or seconds  # the first step pays kernels' first-use costs
    per_step = sum(timed) / len(timed)
    return {
        "plan": plan, "model": size.name, "fits": True, "seq_len": seq_len, "batch": batch, "rank": rank,
        "steps": steps, "optimizer": optimizer_name, "losses": losses, "first_step_seconds": seconds[0],
        "steps_per_second": 1 / per_step, "tokens_per_second": batch * seq_len / per_step,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "measured_on": "cuda:0 allocated" if cuda else "resident memory growth",
        "measured_bytes": peak.added, "predicted_bytes": predicted, "planner_breakdown": breakdown,
        "relative_error": (predicted - peak.added) / peak.added if peak.added else None,
    }
