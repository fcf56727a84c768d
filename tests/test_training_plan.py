"""The planner's training memory: its terms, its choices on a T4, its errors, and its peak against a real LoRA
training step measured on this CPU (peft + torch's AdamW, written independently of helpers.finetune)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.errors import MemoryBudgetError
from helpers.memory.bytes import GiB
from helpers.memory.planner import Budget
from helpers.memory.training_plan import choose_training, largest_trainable, plan_training, training_peak_bytes
from helpers.opt.sizes import OPTSize

REPO = Path(__file__).resolve().parents[1]


def measure(layers, heads, d_model, ffn, seq_len, batch, rank, checkpointing) -> int:
    done = subprocess.run([sys.executable, str(REPO / "tests" / "training_step.py"),
                           *map(str, (layers, heads, d_model, ffn, seq_len, batch, rank, int(checkpointing)))],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])["measured_bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("layers, heads, d_model, ffn, seq_len, batch, rank, checkpointing", [
    (2, 4, 64, 256, 128, 2, 32, True),  # tiny: the logits' three vocab-wide tensors are most of it
    (2, 12, 384, 1536, 128, 4, 8, True),
    (4, 12, 768, 3072, 128, 2, 16, True),  # OPT-125m's width
    (3, 8, 512, 2048, 64, 8, 16, True),
    (4, 8, 256, 1024, 256, 2, 16, False),  # every layer's activations kept
])
def test_predicted_training_peak_within_ten_percent_of_measured(layers, heads, d_model, ffn, seq_len, batch, rank,
                                                                checkpointing):
    size = OPTSize("measured", layers, heads, d_model, ffn, d_model, True)
    breakdown = training_peak_bytes(size, "lora-fp32", seq_len=seq_len, batch_size=batch, rank=rank,
                                    gradient_checkpointing=checkpointing)
    predicted = breakdown["total"] - breakdown["overhead"]
    measured = measure(layers, heads, d_model, ffn, seq_len, batch, rank, checkpointing)
    print(f"predicted {predicted / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB, "
          f"error {(predicted - measured) / measured:+.1%}")
    assert abs(predicted - measured) <= 0.10 * measured, (predicted, measured, breakdown)


T4 = Budget(gpu_bytes=15 * GiB, gpus=1, cpu_bytes=12 * GiB, gpu_name="Tesla T4")


def test_the_terms_add_up_and_follow_the_plan():
    b = training_peak_bytes("opt-6.7b", "lora-int8", seq_len=512, batch_size=4)
    assert b["total"] == sum(v for k, v in b.items() if k not in ("total", "logits"))
    assert b["lora_parameters"] == 32 * 2 * 16 * 2 * 4096 * 4  # 8.4M trainable parameters in fp32, as peft's example
    assert b["logits"] == 3 * 512 * 4 * 50272 * 4 and b["activations"] > b["logits"]
    fp16, nf4 = (training_peak_bytes("opt-6.7b", p, seq_len=512, batch_size=4)["weights"]
                 for p in ("lora-fp16", "qlora-nf4"))
    assert fp16 > b["weights"] > nf4
    without = training_peak_bytes("opt-6.7b", "lora-int8", seq_len=512, batch_size=4, gradient_checkpointing=False)
    assert without["activations"] > 4 * b["activations"]
    assert training_peak_bytes("opt-6.7b", "lora-int8", seq_len=1024, batch_size=4)["total"] > b["total"]


def test_what_a_t4_trains_at_512_tokens_and_batch_4():
    options = {o.plan: o for o in plan_training("opt-13b", T4)}
    assert not options["lora-fp16"].fits and not options["lora-int8"].fits and options["qlora-nf4"].fits
    assert "more than the GPU's 15.0 GiB" in options["lora-int8"].reason
    assert largest_trainable(T4, plan_name="lora-int8").size == "opt-6.7b"
    assert largest_trainable(T4, plan_name="qlora-nf4").size == "opt-13b"
    assert choose_training(plan_training("opt-1.3b", T4)).plan == "lora-fp16"
    six = {o.plan: o for o in plan_training("opt-6.7b", T4)}  # fp16 fits, with 0.35 GiB of 15 to spare
    assert six["lora-fp16"].fits and not six["lora-fp16"].comfortable and six["lora-int8"].comfortable
    assert choose_training(list(six.values())).plan == "lora-int8"  # auto: the one that fits with room
    assert choose_training(list(six.values()), "lora-fp16").plan == "lora-fp16"  # named: fitting is enough
    assert largest_trainable(T4).plan == "qlora-nf4" and largest_trainable(T4).size == "opt-13b"
    assert choose_training(plan_training("opt-13b", T4)).plan == "qlora-nf4"


def test_a_plan_that_does_not_fit_says_the_figures_and_what_does():
    with pytest.raises(MemoryBudgetError, match=r"lora-fp16 on opt-13b needs 26\.\d GiB, more than the GPU's 15\.0 GiB"
                                                r".*--plan qlora-nf4 \(10\.\d GiB\)"):
        choose_training(plan_training("opt-13b", T4), "lora-fp16", model="opt-13b")
    with pytest.raises(MemoryBudgetError, match="No training plan fits opt-30b"):
        choose_training(plan_training("opt-30b", T4), model="opt-30b")
    cpu = Budget(cpu_bytes=8 * GiB)
    options = {o.plan: o for o in plan_training("opt-125m", cpu)}
    assert options["lora-int8"].reason == "needs a CUDA GPU" and options["lora-fp32"].fits
    with pytest.raises(ValueError, match="not a training plan"):
        choose_training(plan_training("opt-125m", cpu), "lora-bf16")


@pytest.mark.parametrize("kw", [dict(seq_len=1), dict(seq_len=4096), dict(batch_size=0), dict(rank=0)])
def test_impossible_settings_are_refused(kw):
    with pytest.raises(ValueError):
        training_peak_bytes("opt-125m", "lora-fp16", **({"seq_len": 512, "batch_size": 4} | kw))


def test_plan_train_command(capsys):
    from helpers.cli.main import main

    budget = ["--gpu-memory", "15GiB", "--cpu-memory", "12GiB"]
    assert main(["plan", "--model", "opt-13b", "--train", *budget]) == 0
    out = capsys.readouterr().out
    assert "Best: qlora-nf4" in out and "needs 26.5 GiB, more than the GPU's 15.0 GiB" in out
    assert main(["plan", "--model", "opt-6.7b", "--train", "--seq-len", "256", "--batch", "2", "--json", *budget]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["model"], data["seq_len"], data["batch"], data["rank"]) == ("opt-6.7b", 256, 2, 16)
    assert [o["plan"] for o in data["options"]] == ["lora-fp16", "lora-int8", "qlora-nf4", "lora-fp32"]
    assert all({"fits", "peak_bytes", "breakdown", "reason", "predicted_peak_bytes"} <= set(o) for o in data["options"])
    assert main(["plan", "--train", "--json", *budget]) == 0
    largest = {r["plan"]: r["option"]["size"] for r in json.loads(capsys.readouterr().out)["largest"]}
    assert largest == {"lora-fp16": "opt-6.7b", "lora-int8": "opt-6.7b", "qlora-nf4": "opt-13b", "lora-fp32": "opt-1.3b"}
    assert main(["plan", "--model", "opt-30b", "--train", *budget]) == 1
    assert "No training plan fits opt-30b" in capsys.readouterr().err
    assert main(["plan", "--model", "opt-125m", "--train", "--seq-len", "5000"]) == 2
    assert main(["plan"]) == 2 and "needs --model" in capsys.readouterr().err
