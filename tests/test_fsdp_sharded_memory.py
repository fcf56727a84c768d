"""OPT-175B's layout at scale on one machine: many parts x many shards converted with peak memory bounded by one
FSDP instance (one layer) across the parts, measured in a process of its own; not by the model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fsdp_writer import from_model, write_layout
from safetensors import safe_open
from tiny_models import tiny_config
from transformers import OPTForCausalLM

MiB = 1024**2
PARTS, SHARDS = 4, 8
SHAPE = dict(hidden_size=1024, ffn_dim=4096, num_attention_heads=16, num_hidden_layers=8, word_embed_proj_dim=1024,
             vocab_size=1024, max_position_embeddings=64)

# Run in a process of its own: everything a conversion imports and builds once (torch, transformers, the
# tokenizer, a meta-device OPT) is loaded first, then the high-water mark of resident memory is reset, so what
# is measured is what converting adds.
MEASURE = """
import json, os, sys, time
import torch
from transformers import OPTForCausalLM
from helpers.metaseq import convert
from helpers.opt.tokenizer import opt_tokenizer
from helpers.checkpoints.write import hf_config
from helpers.checkpoints.layouts import Architecture
opt_tokenizer()
with torch.device("meta"):
    OPTForCausalLM(hf_config(Architecture(1, 64, 256, 4, 64, True, 64), torch.float16))
def status(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) * 1024
baseline = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current resident size
started = time.monotonic()
report = convert(sys.argv[1], sys.argv[2])
print(json.dumps({"baseline": baseline, "peak": status("VmHWM:"), "seconds": time.monotonic() - started,
                  "files": len(report.source), "notes": report.notes}))
"""


@pytest.fixture(scope="module")
def many_files(tmp_path_factory):
    torch.manual_seed(0)
    model = OPTForCausalLM(tiny_config("pre-ln", **SHAPE)).eval()
    folder = tmp_path_factory.mktemp("opt-wide") / "ckpt"
    paths = write_layout(from_model(model, PARTS), folder, SHARDS)
    return model, folder, paths


def _bounds(model) -> dict[str, int]:
    d, f = model.config.hidden_size, model.config.ffn_dim
    layer = (4 * d * d + 2 * d * f + 9 * d + f) * 2  # one decoder layer in fp16, across all parts
    largest = d * f * 2  # fc1 / fc2 weight
    return {"layer": layer, "bound": 2 * layer + 2 * largest + 32 * MiB}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures resident memory through /proc")
def test_many_parts_and_shards_convert_in_memory_bounded_by_one_layer(tmp_path, many_files):
    model, folder, paths = many_files
    total = sum(p.stat().st_size for p in paths)
    bounds = _bounds(model)
    assert len(paths) == PARTS * SHARDS and total > 150 * MiB
    assert bounds["bound"] < total / 2  # holding the files (or the model) would break the bound
    done = subprocess.run([sys.executable, "-c", MEASURE, str(folder), str(tmp_path / "hf")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.splitlines()[-1])
    added = measured["peak"] - measured["baseline"]
    print(f"\n{len(paths)} files, {total / MiB:.0f} MiB: peak resident memory added {added / MiB:.0f} MiB "
          f"(bound {bounds['bound'] / MiB:.0f} MiB, one layer {bounds['layer'] / MiB:.0f} MiB), "
          f"{measured['seconds']:.1f} s, output {sum(p.stat().st_size for p in (tmp_path / 'hf').iterdir()) / MiB:.0f} MiB")
    assert added < bounds["bound"], (added, bounds)
    with safe_open(str(tmp_path / "hf" / "model-00002-of-00009.safetensors"), framework="pt") as handle:
        fc1 = handle.get_tensor("model.decoder.layers.0.fc1.weight")
    assert torch.equal(fc1, model.model.decoder.layers[0].fc1.weight.detach().half())
