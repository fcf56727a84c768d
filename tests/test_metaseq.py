"""Original metaseq checkpoints in every layout convert to Hugging Face folders with the same logits."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from metaseq_writer import metaseq_model, metaseq_state, write_checkpoint
from tiny_models import tiny_model
from transformers import OPTForCausalLM

from helpers.cli.main import main
from helpers.errors import CheckpointError, UnsafeCheckpointError
from helpers.generation.run import generate
from helpers.generation.settings import GenerationSettings
from helpers.loading.model import load_model
from helpers.metaseq import convert, find_parts, load_checkpoint_file
from helpers.opt.tokenizer import encode_prompt

PROMPT = "Natural language processing is a subfield of"
LAYOUTS = {  # name: write_checkpoint arguments
    "single": dict(),
    "single-no-version": dict(version=False),
    "single-dictconfig": dict(cfg="dictconfig"),
    "single-bare": dict(cfg=None),
    "flat-fp16": dict(flat=True, dtype=torch.float16),
    "mp2": dict(parts=2),
    "mp2-flat-fp16": dict(parts=2, flat=True, dtype=torch.float16),
    "mp4": dict(parts=4, cfg="dictconfig"),
    "mp4-flat-fp16": dict(parts=4, flat=True, dtype=torch.float16),
}


def _logits(model, tokenizer, text=PROMPT):
    ids = torch.tensor([encode_prompt(tokenizer, text)])
    with torch.no_grad():
        return model(ids).logits[0].float()


IDS = [2, 31, 7, 412, 999, 5, 64, 300, 17, 812]  # BOS, then ids of metaseq_model's 1,000-symbol dictionary


def _logits_of(model, ids=IDS):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_converts_to_the_same_model(tmp_path, variant, layout):
    """metaseq's own small dictionary (1,008 rows) and positions (100), in every layout."""
    source = metaseq_model(variant, seed=11)
    args = LAYOUTS[layout]
    write_checkpoint(source, tmp_path / "ckpt", **args)
    extra = {"num_heads": 4} if args.get("cfg", "namespace") is None else {}
    report = convert(tmp_path / "ckpt", tmp_path / "hf", **extra)
    assert report.model_parallel == args.get("parts", 1)
    assert report.parameters == sum(p.numel() for p in source.parameters())
    assert (report.architecture["vocab_size"], report.architecture["max_positions"]) == (1008, 100)
    assert any("1,008 rows, not OPT's 50,272" in note for note in report.notes)

    fp16 = args.get("dtype") == torch.float16
    assert report.dtype == ("float16" if fp16 else "float32")
    model, tok, info = load_model(str(tmp_path / "hf"))  # our loader plans for the model's own 100 positions
    assert tok("Hello").input_ids[0] == 2 and info.dtype == "float32"  # OPT's tokenizer is still written
    # Module.half() converts in place: copies keep `source` in fp32 and `reference` fp32 for what follows
    reference = copy.deepcopy(source).half().float() if fp16 else source  # the same values the file holds
    torch.testing.assert_close(_logits_of(model), _logits_of(reference), atol=1e-5, rtol=0)
    plain = OPTForCausalLM.from_pretrained(tmp_path / "hf", dtype="auto")  # plain transformers, the file's dtype
    assert plain.dtype == (torch.float16 if fp16 else torch.float32)
    assert plain.config.vocab_size == 1008 and plain.config.max_position_embeddings == 100
    expected = _logits_of(copy.deepcopy(source).half() if fp16 else source)
    torch.testing.assert_close(_logits_of(plain), expected, atol=2e-2 if fp16 else 1e-5, rtol=0)
    settings = GenerationSettings.greedy(max_new_tokens=12)
    assert generate(model, tok, IDS, settings).token_ids == generate(reference, tok, IDS, settings).token_ids


def test_opts_own_vocabulary_converts_without_a_note(tmp_path, tokenizer):
    source = tiny_model("pre-ln", seed=4)
    write_checkpoint(source, tmp_path / "ckpt", parts=2, flat=True, dtype=torch.float16)
    report = convert(tmp_path / "ckpt", tmp_path / "hf")
    assert report.architecture["vocab_size"] == 50272 and not any("vocabulary" in n for n in report.notes)
    converted = load_model(str(tmp_path / "hf")).model
    torch.testing.assert_close(_logits(converted, tokenizer), _logits(source.half().float(), tokenizer),
                               atol=1e-5, rtol=0)


@pytest.mark.slow
def test_released_layout_of_opt_125m_without_cfg_converts_with_size(tmp_path, tokenizer):
    """As the 125M release: two FSDP-flattened fp16 model-parallel parts; the cfg stripped, --size given."""
    from helpers.opt.random_weights import random_model

    source = random_model("opt-125m", dtype=torch.float16, seed=5)
    write_checkpoint(source, tmp_path / "125m", parts=2, flat=True, cfg=None)
    with pytest.raises(CheckpointError, match="have the sizes of opt-125m: --size opt-125m"):
        convert(tmp_path / "125m", tmp_path / "hf")
    report = convert(tmp_path / "125m", tmp_path / "hf", size="opt-125m")
    assert report.layout == "FSDP-flattened, 2-way model parallel" and report.parameters == 125_239_296
    converted = load_model(str(tmp_path / "hf")).model
    torch.testing.assert_close(_logits(converted, tokenizer), _logits(source.float(), tokenizer), atol=1e-4, rtol=0)


def test_a_file_without_decoder_version_keeps_its_final_layer_norm(tmp_path, tokenizer):
    source = tiny_model("pre-ln", seed=3)
    with torch.no_grad():
        source.model.decoder.final_layer_norm.weight.mul_(3.0)  # make the final norm matter
    write_checkpoint(source, tmp_path / "old", version=False, name="restored.pt")
    report = convert(tmp_path / "old" / "restored.pt", tmp_path / "hf")
    assert any("decoder.version" in note for note in report.notes)
    converted = OPTForCausalLM.from_pretrained(tmp_path / "hf")
    torch.testing.assert_close(converted.model.decoder.final_layer_norm.weight, source.model.decoder.final_layer_norm.weight)
    torch.testing.assert_close(_logits(converted, tokenizer), _logits(source, tokenizer), atol=1e-5, rtol=0)


def test_output_projection_is_never_copied_from_one_part(tmp_path):
    source = tiny_model("pre-ln")
    write_checkpoint(source, tmp_path / "mp", parts=2)
    convert(tmp_path / "mp", tmp_path / "hf")
    converted = OPTForCausalLM.from_pretrained(tmp_path / "hf")
    assert converted.lm_head.weight.shape[0] == 50272
    torch.testing.assert_close(converted.lm_head.weight, source.lm_head.weight)


def test_dictconfig_is_read_without_omegaconf_installed(tmp_path):
    pytest.importorskip("omegaconf")  # only to write the test file
    source = tiny_model("pre-ln")
    write_checkpoint(source, tmp_path / "ckpt", cfg="dictconfig")
    code = (
        "import sys; sys.modules['omegaconf'] = None\n"  # any import of omegaconf now fails
        "from helpers.metaseq import read_part\n"
        f"part = read_part(__import__('pathlib').Path({str(tmp_path / 'ckpt' / 'reshard.pt')!r}))\n"
        "assert part.cfg['model']['decoder_attention_heads'] == 4, part.cfg\n"
        "assert part.cfg['common']['model_parallel_size'] == 1\n"
        "assert 'omegaconf' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_conversion_to_another_dtype(tmp_path, tokenizer):
    source = tiny_model("post-ln")
    write_checkpoint(source, tmp_path / "ckpt", dtype=torch.float16)
    convert(tmp_path / "ckpt", tmp_path / "hf", dtype="float32")
    assert OPTForCausalLM.from_pretrained(tmp_path / "hf").dtype == torch.float32


# ------------------------------------------------------------------------------------------ bad inputs


def _one_file(tmp_path, **kwargs) -> Path:
    return write_checkpoint(tiny_model("pre-ln"), tmp_path / "ckpt", **kwargs)[0]


def test_lfs_pointer_says_git_lfs_pull(tmp_path):
    path = _one_file(tmp_path)
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 9999\n")
    with pytest.raises(CheckpointError, match="git lfs install && git lfs pull"):
        convert(path, tmp_path / "hf")


def test_zero_byte_file(tmp_path):
    path = _one_file(tmp_path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        convert(path, tmp_path / "hf")


def test_truncated_file(tmp_path):
    path = _one_file(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        convert(path, tmp_path / "hf")


def test_not_a_checkpoint_at_all(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are my notes, not weights")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        convert(path, tmp_path / "hf")


def test_missing_part(tmp_path):
    paths = write_checkpoint(tiny_model("pre-ln"), tmp_path / "mp", parts=4)
    paths[2].unlink()
    with pytest.raises(CheckpointError, match=r"part\(s\) 2 missing"):
        convert(tmp_path / "mp", tmp_path / "hf")


def test_extra_part(tmp_path):
    paths = write_checkpoint(tiny_model("pre-ln"), tmp_path / "mp", parts=2)
    (tmp_path / "mp" / "reshard-model_part-2.pt").write_bytes(paths[1].read_bytes())
    with pytest.raises(CheckpointError, match="Found 3 .* each holds 1/2 of the model .* 1 of them do not belong"):
        convert(tmp_path / "mp", tmp_path / "hf")


def test_extra_part_without_cfg_is_caught_by_the_shapes(tmp_path):
    paths = write_checkpoint(tiny_model("pre-ln"), tmp_path / "mp", parts=2, cfg=None)
    (tmp_path / "mp" / "reshard-model_part-2.pt").write_bytes(paths[1].read_bytes())
    with pytest.raises(CheckpointError, match="each holds 1/2 of the model"):
        convert(tmp_path / "mp", tmp_path / "hf", num_heads=4)


def test_a_missing_flat_part_is_caught_by_the_flat_sizes_whatever_the_cfg_says(tmp_path):
    flat = write_checkpoint(metaseq_model("pre-ln"), tmp_path / "flat", parts=2, flat=True)
    flat[1].unlink()
    raw = torch.load(flat[0], weights_only=False)
    raw["cfg"]["common"].model_parallel_size = 1  # a cfg that lies: the flat layer sizes do not
    torch.save(raw, flat[0])
    with pytest.raises(CheckpointError, match=r"holds 1/2 of the model each .* 1 model-parallel part\(s\) missing"):
        convert(tmp_path / "flat", tmp_path / "hf")


def test_a_duplicate_part_number(tmp_path):
    paths = write_checkpoint(tiny_model("pre-ln"), tmp_path / "mp", parts=2)
    (tmp_path / "mp" / "reshard-model_part-01.pt").write_bytes(paths[1].read_bytes())
    with pytest.raises(CheckpointError, match="part 1 is there twice .*reshard-model_part-01.pt, reshard-model_part-1.pt"):
        convert(tmp_path / "mp", tmp_path / "hf")


def test_parts_whose_shapes_disagree(tmp_path):
    write_checkpoint(metaseq_model("pre-ln"), tmp_path / "mp", parts=2)
    other = write_checkpoint(tiny_model("pre-ln", vocab_size=1008, max_position_embeddings=100, ffn_dim=128),
                             tmp_path / "other", parts=2)
    (tmp_path / "mp" / "reshard-model_part-1.pt").write_bytes(other[1].read_bytes())
    with pytest.raises(CheckpointError, match="reshard-model_part-1.pt does not hold a 1/2 model-parallel share .*fc1"):
        convert(tmp_path / "mp", tmp_path / "hf")


def test_a_full_size_file_is_a_singleton_whatever_its_cfg_says(tmp_path):
    source = metaseq_model("post-ln", seed=8)
    path = write_checkpoint(source, tmp_path / "one", name="restored.pt")[0]
    raw = torch.load(path, weights_only=False)
    raw["cfg"]["common"].model_parallel_size = 2  # as convert_to_singleton leaves it
    torch.save(raw, path)
    report = convert(path, tmp_path / "hf")
    assert report.model_parallel == 1 and any("model_parallel_size 2, but the tensors are full size" in n
                                                for n in report.notes)
    torch.testing.assert_close(_logits_of(OPTForCausalLM.from_pretrained(tmp_path / "hf")), _logits_of(source),
                               atol=1e-5, rtol=0)


def test_parts_from_different_checkpoints(tmp_path):
    write_checkpoint(tiny_model("pre-ln", seed=1), tmp_path / "mp", parts=2)
    other = write_checkpoint(tiny_model("pre-ln", seed=2), tmp_path / "other", parts=2)
    (tmp_path / "mp" / "reshard-model_part-1.pt").write_bytes(other[1].read_bytes())
    with pytest.raises(CheckpointError, match="disagree"):
        convert(tmp_path / "mp", tmp_path / "hf")


def test_mismatched_shapes_against_the_size(tmp_path):
    _one_file(tmp_path, flat=True, cfg=None)
    with pytest.raises(CheckpointError, match="holds 2 flattened layers, but the --size opt-350m says 24"):
        convert(tmp_path / "ckpt", tmp_path / "hf", size="opt-350m")
    _one_file(tmp_path / "b", cfg=None)
    with pytest.raises(CheckpointError, match="do not match the --size opt-125m"):
        convert(tmp_path / "b" / "ckpt", tmp_path / "hf", size="opt-125m")


def test_no_cfg_and_no_head_count_asks_for_one(tmp_path):
    _one_file(tmp_path, cfg=None)
    with pytest.raises(CheckpointError, match="pass --size NAME or --num-heads N"):
        convert(tmp_path / "ckpt", tmp_path / "hf")
    _one_file(tmp_path / "flat", flat=True, cfg=None)
    with pytest.raises(CheckpointError, match="--size"):
        convert(tmp_path / "flat" / "ckpt", tmp_path / "hf", num_heads=4)


def test_a_hugging_face_file_is_pointed_to_load_model(tmp_path):
    torch.save(tiny_model("pre-ln").state_dict(), tmp_path / "pytorch_model.pt")
    with pytest.raises(CheckpointError, match="already in Hugging Face"):
        convert(tmp_path / "pytorch_model.pt", tmp_path / "hf")


class _Payload:
    """Pickles as a call to os.system: what a malicious checkpoint looks like."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil" / "reshard.pt"
    path.parent.mkdir()
    state = metaseq_state(tiny_model("pre-ln"))
    torch.save({"model": state, "cfg": {"model": _Payload(marker)}}, path)
    with pytest.raises(UnsafeCheckpointError, match="nothing in it was executed"):
        convert(path, tmp_path / "hf")
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_checkpoint_file(path)
    assert not marker.exists() and not (tmp_path / "hf").exists()


def test_a_failure_leaves_no_half_written_model(tmp_path, monkeypatch):
    import helpers.checkpoints.convert as stages

    _one_file(tmp_path)
    calls = []

    def fail_after_writing(*args, **kwargs):
        calls.append(1)
        raise CheckpointError("simulated failure after the weights were written")

    monkeypatch.setattr(stages, "check_against_model", fail_after_writing)
    with pytest.raises(CheckpointError, match="simulated"):
        convert(tmp_path / "ckpt", tmp_path / "hf")
    assert calls and not (tmp_path / "hf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf.partial")]


def test_finding_parts(tmp_path):
    write_checkpoint(tiny_model("pre-ln"), tmp_path / "repo" / "model", parts=2)
    parts = find_parts(tmp_path / "repo")
    assert [p.name for p in parts] == ["reshard-model_part-0.pt", "reshard-model_part-1.pt"]
    assert find_parts(parts[1]) == parts  # one part file brings its siblings
    (tmp_path / "shards").mkdir()
    for name in ("checkpoint_last-model_part-1-shard0.pt", "checkpoint_last-model_part-0-shard10.pt",
                 "checkpoint_last-model_part-0-shard2.pt"):
        (tmp_path / "shards" / name).write_bytes(b"x")
    assert [p.name for p in find_parts(tmp_path / "shards")] == [  # FSDP-sharded: part by part, shard by shard
        "checkpoint_last-model_part-0-shard2.pt", "checkpoint_last-model_part-0-shard10.pt",
        "checkpoint_last-model_part-1-shard0.pt"]
    with pytest.raises(CheckpointError, match="one FSDP shard .* Pass the folder that holds all of its shards"):
        find_parts(tmp_path / "shards" / "checkpoint_last-model_part-1-shard0.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        find_parts(tmp_path / "empty")


def test_large_models_are_written_in_shards_with_an_index(tmp_path, tokenizer):
    source = tiny_model("pre-ln")
    write_checkpoint(source, tmp_path / "ckpt")
    report = convert(tmp_path / "ckpt", tmp_path / "hf", max_shard_bytes=256 * 1024)
    assert "model.safetensors.index.json" in report.files and len(report.files) > 4
    converted = OPTForCausalLM.from_pretrained(tmp_path / "hf")
    torch.testing.assert_close(_logits(converted, tokenizer), _logits(source, tokenizer), atol=1e-5, rtol=0)


def test_command_line(tmp_path, capsys):
    _one_file(tmp_path, cfg=None)
    assert main(["convert-metaseq", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 1
    assert "--num-heads" in capsys.readouterr().err
    assert main(["convert-metaseq", str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--num-heads", "4"]) == 0
    out = capsys.readouterr().out
    assert "Converted unflattened, single file checkpoint" in out and "python -m helpers generate --model" in out
    assert main(["generate", "--model", str(tmp_path / "hf"), "--greedy", "--max-new-tokens", "3", "Hello"]) == 0
