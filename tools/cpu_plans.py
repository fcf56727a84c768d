"""The CPU plans side by side (docs/speed.md's table): tokens/s, greedy text equal to fp32's, logit difference."""

# PYTHONPATH=. python tools/cpu_plans.py [--model opt-125m] [--new-tokens 128] [--repeats 3] [--ctranslate2]
# OPT random weights in a real shape, the 2022 tutorial's three prompts, batch 1, greedy; the rows run
# interleaved and each keeps its best run.

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from helpers.analysis.comparison import TUTORIAL_PROMPTS
from helpers.analysis.peer_ctranslate2 import PeerModel
from helpers.generation.backends.cpu_int8 import quantize_weights_int8
from helpers.generation.run import generate
from helpers.generation.settings import GenerationSettings
from helpers.loading.apply_plan import quantize_dynamic_int8
from helpers.opt.random_weights import random_model
from helpers.opt.sizes import size_from_config
from helpers.opt.tokenizer import opt_tokenizer


def ours(model, tokenizer, prompt: str, new: int) -> tuple[list[int], float]:
    settings = GenerationSettings.greedy(max_new_tokens=new, min_new_tokens=new)
    result = generate(model, tokenizer, prompt, settings)
    return result.token_ids, result.timings.tokens_per_second


def ctranslate2_rows(model, tokenizer, folder: str) -> dict:
    """CTranslate2 fp32 and int8, converted with its own converter, each run by the bench's `PeerModel` (in a
    process of its own, so that its OpenMP runtime and torch's do not compete: see its docstring)."""
    model.save_pretrained(f"{folder}/hf")
    tokenizer.save_pretrained(f"{folder}/hf")
    rows = {}
    for kind in ("float32", "int8"):
        converter = os.path.join(os.path.dirname(sys.executable), "ct2-transformers-converter")
        subprocess.run([converter, "--model", f"{folder}/hf", "--output_dir", f"{folder}/{kind}", "--quantization",
                        kind, "--force"], check=True, capture_output=True)
        peer = PeerModel(Path(folder) / kind, kind, size_from_config(model.config))

        def run(m, tok, prompt, new, peer=peer):
            start = time.perf_counter()
            ids = peer.greedy([tok.convert_ids_to_tokens(tok(prompt).input_ids)], new)[0]
            return ids, new / (time.perf_counter() - start)
        rows[f"CTranslate2 {'fp32' if kind == 'float32' else 'int8'}"] = (None, run)
    return rows


def logit_difference(model, reference, ids: list[int]) -> float:
    """The largest difference of next-token logits from the reference's, teacher-forced along `ids`."""
    if model.dtype == torch.bfloat16:  # what the engine computes: fp32 arithmetic over the bf16 weights
        model = copy.deepcopy(model).float()
    with torch.inference_mode():
        a = model(torch.tensor([ids])).logits.float()
        b = reference(torch.tensor([ids])).logits.float()
    return (a - b).abs().max().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="opt-125m")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ctranslate2", action="store_true", help="add CTranslate2's fp32 and int8 rows")
    args = parser.parse_args()
    tokenizer = opt_tokenizer()
    fp32 = random_model(args.model, dtype=torch.float32).eval()
    rows = {"fp32-cpu (cpu-fast)": (fp32, ours),
            "bf16-cpu": (copy.deepcopy(fp32).to(torch.bfloat16), ours),
            "int8-cpu (torch dynamic)": (quantize_dynamic_int8(fp32, inplace=False), ours),
            "int8-weights-cpu": (quantize_weights_int8(copy.deepcopy(fp32)), ours)}
    folder = tempfile.TemporaryDirectory(prefix="cpu-plans-")
    if args.ctranslate2:
        rows.update(ctranslate2_rows(fp32, tokenizer, folder.name))
    best = {name: [0.0] * len(TUTORIAL_PROMPTS) for name in rows}
    tokens: dict[str, list] = {name: [None] * len(TUTORIAL_PROMPTS) for name in rows}
    for _ in range(args.repeats):  # interleaved: a busy spell of the machine falls on every row alike
        for p, prompt in enumerate(TUTORIAL_PROMPTS):
            for name, (model, run) in rows.items():
                ids, speed = run(model, tokenizer, prompt, args.new_tokens)
                tokens[name][p], best[name][p] = ids, max(best[name][p], speed)
    reference, base = tokens["fp32-cpu (cpu-fast)"], sum(best["fp32-cpu (cpu-fast)"])
    print(f"{args.model} (random weights), {args.new_tokens} greedy tokens, batch 1, torch threads "
          f"{torch.get_num_threads()}, best of {args.repeats}, the tutorial's {len(TUTORIAL_PROMPTS)} prompts")
    print("| | tokens/s (per prompt) | x fp32 | greedy text equal to fp32's (per prompt) | largest logit difference |")
    print("|---|---|---|---|---|")
    for name, (model, _) in rows.items():
        prefixes = [next((i for i, (a, b) in enumerate(zip(ids, ref)) if a != b), min(len(ids), len(ref)))
                    for ids, ref in zip(tokens[name], reference)]
        diff = "n/a" if model is None else "{:.3g}".format(max(
            logit_difference(model, fp32, tokenizer(prompt).input_ids + ref)
            for prompt, ref in zip(TUTORIAL_PROMPTS, reference)))
        speeds = ", ".join(f"{s:.1f}" for s in best[name])
        share = sum(prefixes) / (len(prefixes) * args.new_tokens)
        print(f"| {name} | {speeds} | {sum(best[name]) / base:.2f}x | {', '.join(map(str, prefixes))} "
              f"({share:.0%}) | {diff} |")
    folder.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
