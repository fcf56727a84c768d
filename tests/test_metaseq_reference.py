"""Checkpoints written by metaseq's own code (../shared/metaseq-reference/), and the layouts metaseq's scripts
make from them, converted through the command line and checked against metaseq's own logits."""

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED
from safetensors.torch import load_file
from transformers import OPTForCausalLM

REFERENCE = SHARED / "metaseq-reference"
CASES = ["mp2_fused", "singleton_postln_proj", "flat_fp16"]
FP32_TOLERANCE, FP16_TOLERANCE = 1e-4, 2e-2
MEASURED: dict[str, float] = {}  # case/inputs/dtype -> max |logit difference|, printed at the end (pytest -s)


def _case(name: str) -> Path:
    folder = REFERENCE / name
    if not (folder / "case.json").is_file():
        pytest.skip(f"metaseq's reference checkpoints are not at {REFERENCE} (set OPT_SHARED_DIR)")
    return folder


def _load(path: Path):
    """A reference file, read as case.json says it must be (weights_only with argparse.Namespace allowed)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, weights_only=True)


def convert_cli(src: Path, dst: Path, *flags: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "helpers", "convert-metaseq", str(src), str(dst), *flags],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def max_differences(folder: Path, case: Path, dtype: torch.dtype) -> dict[str, float]:
    """transformers' OPTForCausalLM from the converted folder, in `dtype`, against metaseq's logits: plain
    inputs, and padded inputs at their non-pad positions."""
    model = OPTForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    inputs, expected = torch.load(case / "inputs.pt"), torch.load(case / "logits.pt")
    mask = inputs["padded_attention_mask"]
    with torch.no_grad():
        plain = model(inputs["plain_input_ids"]).logits.float()
        padded = model(inputs["padded_input_ids"], attention_mask=mask).logits.float()
    keep = mask.bool()
    return {"plain": float((plain - expected["plain"]).abs().max()),
            "padded": float((padded[keep] - expected["padded"][keep]).abs().max())}


def _check(label: str, folder: Path, case: Path, dtype: torch.dtype, tolerance: float) -> None:
    for inputs, difference in max_differences(folder, case, dtype).items():
        MEASURED[f"{label} {inputs} {str(dtype).removeprefix('torch.')}"] = difference
        assert difference <= tolerance, f"{label}, {inputs} inputs: {difference} > {tolerance}"


@pytest.fixture(scope="module", autouse=True)
def _report_measurements():
    yield
    for key, value in MEASURED.items():
        print(f"max |logit difference| {key}: {value:.3g}")


@pytest.mark.parametrize("name", CASES)
def test_metaseq_files_convert_and_match_metaseq_logits(tmp_path, name):
    case = _case(name)
    facts = json.loads((case / "case.json").read_text())
    for filename in facts["checkpoint_files"]:  # the files are the ones metaseq wrote
        assert hashlib.sha256((case / filename).read_bytes()).hexdigest() == facts["files"][filename]["sha256"]
    done = convert_cli(case, tmp_path / "hf")
    assert "not OPT's 50,272" in done.stderr  # a 512-row vocabulary converts, with a note
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    arch = facts["architecture"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["ffn_dim"], config["num_attention_heads"],
            config["word_embed_proj_dim"], config["do_layer_norm_before"], config["vocab_size"],
            config["max_position_embeddings"]) == (
        arch["num_layers"], arch["embed_dim"], arch["ffn_dim"], arch["num_heads"], arch["word_embed_proj_dim"],
        arch["do_layer_norm_before"], arch["vocab_size"], arch["max_positions"])
    if facts["dtype"] == "float16":
        _check(name, tmp_path / "hf", case, torch.float16, FP16_TOLERANCE)
    _check(name, tmp_path / "hf", case, torch.float32, FP32_TOLERANCE)


# ------------------------------------------------------------------------------------------ layouts metaseq's
# scripts make, built from mp2_fused's files as its case.json and issue 13 describe them


def glue_megatron_parts(parts: list[dict]) -> dict:
    """metaseq's glue_megatron_parts, as mp2_fused/case.json describes it: each part's qkv_proj split into
    three equal row blocks k, v, q and the k's, v's, q's joined across parts; fc1 and embed_tokens joined
    along dim 0, out_proj and fc2 weights along dim 1; everything else from part 0."""
    glued = {}
    for key, first in parts[0].items():
        if ".qkv_proj." in key:
            thirds = [p[key].chunk(3, dim=0) for p in parts]
            for i, proj in enumerate("kvq"):
                glued[key.replace("qkv", proj)] = torch.cat([t[i] for t in thirds], dim=0)
        elif ".fc1." in key or key == "decoder.embed_tokens.weight":
            glued[key] = torch.cat([p[key] for p in parts], dim=0)
        elif key.endswith(("out_proj.weight", "fc2.weight")):
            glued[key] = torch.cat([p[key] for p in parts], dim=1)
        else:
            glued[key] = first
    return glued


def _mp2_files() -> list[dict]:
    case = _case("mp2_fused")
    return [_load(case / f"reshard-model_part-{r}.pt") for r in range(2)]


def _dictconfig(cfg: dict):
    """The cfg as fairseq/metaseq's load_checkpoint_to_cpu makes it: OmegaConf.create with Namespaces allowed
    (its own hack on omegaconf's primitive-type check), then set_struct."""
    from omegaconf import OmegaConf, _utils

    check = _utils.is_primitive_type_annotation
    _utils.is_primitive_type_annotation = lambda _: True
    try:
        made = OmegaConf.create(cfg)
    finally:
        _utils.is_primitive_type_annotation = check
    OmegaConf.set_struct(made, True)
    return made


def write_restored(folder: Path) -> Path:
    """convert_to_singleton's restored.pt: the glued full-size weights with decoder.version, in part 0's
    checkpoint whose cfg (a DictConfig) still says model_parallel_size 2; arch renamed transformer_lm."""
    files = _mp2_files()
    output = dict(files[0])
    output["model"] = glue_megatron_parts([f["model"] for f in files])
    output["cfg"] = _dictconfig(files[0]["cfg"])
    output["cfg"]["model"].arch = "transformer_lm"
    output["cfg"]["model"]._name = "transformer_lm"
    folder.mkdir(parents=True)
    torch.save(output, folder / "restored.pt")
    return folder / "restored.pt"


def write_flat_fp16_parts(folder: Path) -> list[Path]:
    """The released layout of the 125M..30B downloads: per model-parallel part, FSDP's flat parameters in
    fp16 (flat_param_0 for the top level, decoder.layers.N.flat_param_0 per layer, in each part's parameter
    order), decoder.version beside them, and the top-level keys of flat_fp16's reshard_mp output."""
    flat_case = json.loads((_case("flat_fp16") / "case.json").read_text())
    fairscale_order = [p["name"] for p in flat_case["flat_layout"]["flat_params"][1]["params"]]
    paths = []
    folder.mkdir(parents=True)
    for r, source in enumerate(_mp2_files()):
        state = source["model"]
        layer0 = [k for k in state if k.startswith("decoder.layers.0.")]
        # fairscale's order for a layer (flat_fp16's metadata) with metaseq's fused projection in place of k, v, q
        unfused = [k.replace(".qkv_proj.", f".{p}_proj.") for k in layer0 for p in "kvq" if ".qkv_proj." in k]
        assert sorted(unfused) == sorted(fairscale_order[:6]) and layer0[2:] == fairscale_order[6:]
        top = [k for k in state if not k.startswith("decoder.layers.") and k != "decoder.version"]
        model = {"flat_param_0": torch.cat([state[k].reshape(-1) for k in top]).half(),
                 "decoder.version": state["decoder.version"].half()}
        layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("decoder.layers."))
        for i in range(layers):
            names = [k.replace("layers.0.", f"layers.{i}.") for k in layer0]
            model[f"decoder.layers.{i}.flat_param_0"] = torch.cat([state[k].reshape(-1) for k in names]).half()
        cfg = source["cfg"]
        cfg["common"].update(fp16=True, memory_efficient_fp16=True)
        payload = {"model": model, "cfg": cfg, "criterion": None, "optimizer_history": source["optimizer_history"],
                   "task_state": {}, "extra_state": source["extra_state"]}
        paths.append(folder / f"reshard-model_part-{r}.pt")
        torch.save(payload, paths[-1])
    return paths


def write_bare_old(folder: Path) -> Path:
    """A state dict saved on its own before mid-2022: full-size weights, the tied output projection beside
    the token table, no decoder.version and no cfg."""
    glued = glue_megatron_parts([f["model"] for f in _mp2_files()])
    del glued["decoder.version"]
    glued["decoder.output_projection.weight"] = glued["decoder.embed_tokens.weight"]
    folder.mkdir(parents=True)
    torch.save(glued, folder / "checkpoint_last.pt")
    return folder / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def mp2_converted(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("mp2") / "hf"
    convert_cli(_case("mp2_fused"), out)
    return load_file(out / "model.safetensors")


def test_convert_to_singletons_restored_pt_converts_exactly(tmp_path, mp2_converted):
    restored = write_restored(tmp_path / "restored")
    done = convert_cli(restored, tmp_path / "hf")
    assert "model_parallel_size 2, but the tensors are full size" in done.stderr
    assert "unflattened, single file" in done.stdout
    converted = load_file(tmp_path / "hf" / "model.safetensors")
    assert converted.keys() == mp2_converted.keys()
    assert all(torch.equal(converted[k], mp2_converted[k]) for k in converted)
    _check("restored.pt", tmp_path / "hf", _case("mp2_fused"), torch.float32, FP32_TOLERANCE)


def test_flattened_fp16_model_parallel_parts_convert_exactly(tmp_path, mp2_converted):
    write_flat_fp16_parts(tmp_path / "flat")
    done = convert_cli(tmp_path / "flat", tmp_path / "hf")
    assert "FSDP-flattened, 2-way model parallel" in done.stdout and "float16" in done.stdout
    converted = load_file(tmp_path / "hf" / "model.safetensors")
    assert converted.keys() == mp2_converted.keys()
    assert all(converted[k].dtype == torch.float16 and torch.equal(converted[k], mp2_converted[k].half())
               for k in converted)
    _check("flat fp16 mp2", tmp_path / "hf", _case("mp2_fused"), torch.float16, FP16_TOLERANCE)


def test_a_bare_state_dict_without_decoder_version_converts_exactly(tmp_path, mp2_converted):
    bare = write_bare_old(tmp_path / "old")
    done = convert_cli(bare, tmp_path / "hf", "--num-heads", "4")
    assert "no decoder.version" in done.stderr and "it is kept here" in done.stderr
    converted = load_file(tmp_path / "hf" / "model.safetensors")
    assert converted.keys() == mp2_converted.keys()
    assert all(torch.equal(converted[k], mp2_converted[k]) for k in converted)
    _check("bare state dict", tmp_path / "hf", _case("mp2_fused"), torch.float32, FP32_TOLERANCE)


def test_a_bare_state_dict_needs_a_head_count(tmp_path):
    bare = write_bare_old(tmp_path / "old")
    done = subprocess.run([sys.executable, "-m", "helpers", "convert-metaseq", str(bare), str(tmp_path / "hf")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "pass --size NAME or --num-heads N" in done.stderr
    assert not (tmp_path / "hf").exists() and [p.name for p in tmp_path.iterdir()] == ["old"]


def test_one_part_of_two_is_refused_whatever_the_names(tmp_path):
    """A lone model-parallel part, even renamed as a single file and with its cfg removed, is found out by
    its shapes: the attention holds half of d_model."""
    part = _mp2_files()[0]
    (tmp_path / "lone").mkdir()
    torch.save(part["model"], tmp_path / "lone" / "restored.pt")
    done = subprocess.run([sys.executable, "-m", "helpers", "convert-metaseq", str(tmp_path / "lone" / "restored.pt"),
                           str(tmp_path / "hf"), "--num-heads", "4"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "1/2 of the model" in done.stderr and "1 model-parallel part(s) missing" in done.stderr
    assert not (tmp_path / "hf").exists()
