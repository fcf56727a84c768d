"""Every loader against damaged, foreign and malicious files: a clear error naming what to do, nothing
executed, nothing half-written; or, where the damage is harmless, a model that works."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from metaseq_writer import write_checkpoint
from safetensors.torch import load_file, save_file
from tiny_models import save_tiny_model, tiny_model

from helpers.errors import CheckpointError, HelpersError, ModelLoadError, UnsafeCheckpointError
from helpers.loading.model import load_model
from helpers.metaseq import convert


class Payload:
    """Pickles as a call to os.system: what a malicious checkpoint looks like."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------------------------------ Hugging Face folders


def _weights(folder: Path) -> Path:
    return folder / "model.safetensors"


def zero_byte(folder: Path):
    _weights(folder).write_bytes(b"")


def truncated(folder: Path):
    data = _weights(folder).read_bytes()
    _weights(folder).write_bytes(data[: len(data) // 3])


def lfs_pointer(folder: Path):
    _weights(folder).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 13798816\n")


def pickle_in_safetensors_name(folder: Path):
    tensors = {k: v.clone() for k, v in load_file(_weights(folder)).items()}  # not views of the file we replace
    torch.save(tensors, _weights(folder))


def config_not_json(folder: Path):
    (folder / "config.json").write_text("{ this is not json")


def config_shapes_wrong(folder: Path):
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 128
    (folder / "config.json").write_text(json.dumps(config))


def config_more_layers_than_weights(folder: Path):  # config asks for 4 layers, the weights hold 2
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 4
    (folder / "config.json").write_text(json.dumps(config))


def one_layer_missing(folder: Path):
    tensors = {k: v.clone() for k, v in load_file(_weights(folder)).items() if ".layers.1." not in k}
    save_file(tensors, _weights(folder), metadata={"format": "pt"})


def sharded_missing_shard(folder: Path):
    tensors = {k: v.clone() for k, v in load_file(_weights(folder)).items()}
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, folder / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    _weights(folder).unlink()
    (folder / "model-00002-of-00002.safetensors").unlink()


def malicious_bin(folder: Path):
    _weights(folder).unlink()
    torch.save({"model.decoder.embed_tokens.weight": Payload(folder / "pwned")}, folder / "pytorch_model.bin")


def tokenizer_garbage(folder: Path):
    (folder / "tokenizer.json").write_text("garbage")


def no_weights(folder: Path):
    _weights(folder).unlink()


def empty_folder(folder: Path):
    for path in folder.iterdir():
        path.unlink()


def extra_tensor(folder: Path):  # harmless: transformers ignores a weight the model does not have
    tensors = {k: v.clone() for k, v in load_file(_weights(folder)).items()}
    tensors["model.decoder.something_else"] = torch.zeros(3)
    save_file(tensors, _weights(folder), metadata={"format": "pt"})


def mixed_fp16_fp32(folder: Path):  # harmless: loading casts every weight to the dtype asked for
    tensors = {k: (v.half() if "layers.0" in k else v.clone()) for k, v in load_file(_weights(folder)).items()}
    save_file(tensors, _weights(folder), metadata={"format": "pt"})


FOLDER_CASES = [
    (zero_byte, "incomplete or damaged"),
    (truncated, "incomplete or damaged"),
    (lfs_pointer, "git lfs pull"),
    (pickle_in_safetensors_name, "incomplete or damaged"),
    (config_not_json, r"config\.json is not valid JSON"),
    (config_shapes_wrong, r"damaged: .* another shape than config.json implies .*layers 0, 1"),
    (config_more_layers_than_weights, r"damaged: 32 weight tensor\(s\) .* not in the weight files: layers 2, 3"),
    (one_layer_missing, r"damaged: 16 weight tensor\(s\) .* not in the weight files: layer 1 \(fc1"),
    (sharded_missing_shard, "incomplete or damaged"),
    (malicious_bin, "incomplete or damaged"),
    (tokenizer_garbage, r"tokenizer\.json is not valid JSON"),
    (no_weights, "no weights"),
    (empty_folder, "no config.json"),
    (extra_tensor, None),
    (mixed_fp16_fp32, None),
]


@pytest.mark.parametrize("damage, message", FOLDER_CASES, ids=[c[0].__name__ for c in FOLDER_CASES])
def test_hugging_face_folders(tmp_path, damage, message):
    folder = save_tiny_model(tmp_path / "model", "pre-ln")
    damage(folder)
    if message is None:
        loaded = load_model(str(folder))
        assert loaded.generate("Hello", max_new_tokens=3, do_sample=False).token_ids
        return
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(str(folder))
    assert str(folder) in str(info.value) or "folder" in str(info.value)
    assert "above report" not in str(info.value)  # transformers' report is silenced: never point at it
    assert not (folder / "pwned").exists()


# ------------------------------------------------------------------------------------------ metaseq files


def _single(folder: Path) -> Path:
    return write_checkpoint(tiny_model("pre-ln"), folder)[0]


def ms_zero_byte(folder: Path):
    _single(folder).write_bytes(b"")


def ms_truncated(folder: Path):
    path = _single(folder)
    path.write_bytes(path.read_bytes()[:5000])


def ms_lfs_pointer(folder: Path):
    _single(folder).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 99\n")


def ms_wrong_format(folder: Path):
    _single(folder).write_text('{"this": "is json"}')


def ms_missing_part(folder: Path):
    write_checkpoint(tiny_model("pre-ln"), folder, parts=4)[1].unlink()


def ms_extra_part(folder: Path):
    paths = write_checkpoint(tiny_model("pre-ln"), folder, parts=2)
    shutil.copy(paths[1], folder / "reshard-model_part-2.pt")


def ms_foreign_part(folder: Path):
    write_checkpoint(tiny_model("pre-ln", seed=1), folder, parts=2)
    other = write_checkpoint(tiny_model("pre-ln", seed=2), folder.parent / "other", parts=2)
    shutil.copy(other[1], folder / "reshard-model_part-1.pt")


def ms_malicious(folder: Path):
    folder.mkdir(parents=True)
    torch.save({"model": {"decoder.embed_tokens.weight": torch.zeros(2)}, "cfg": Payload(folder / "pwned")},
               folder / "reshard.pt")


def ms_not_opt(folder: Path):
    folder.mkdir(parents=True)
    torch.save({"model": {"encoder.layer.0.weight": torch.zeros(2)}}, folder / "reshard.pt")


def ms_flat_damaged(folder: Path):
    path = write_checkpoint(tiny_model("pre-ln"), folder, flat=True)[0]
    raw = torch.load(path, weights_only=False)
    raw["model"]["decoder.layers.1.flat_param_0"] = raw["model"]["decoder.layers.1.flat_param_0"][:-7]
    torch.save(raw, path)


def ms_duplicate_part(folder: Path):
    paths = write_checkpoint(tiny_model("pre-ln"), folder, parts=2)
    shutil.copy(paths[1], folder / "reshard-model_part-01.pt")


def ms_shapes_disagree(folder: Path):
    write_checkpoint(tiny_model("pre-ln"), folder, parts=2)
    other = write_checkpoint(tiny_model("pre-ln", ffn_dim=128), folder.parent / "other", parts=2)
    shutil.copy(other[1], folder / "reshard-model_part-1.pt")


def ms_lone_half_part(folder: Path):  # one of two parts, renamed as a single file, its cfg gone
    path = write_checkpoint(tiny_model("pre-ln"), folder, parts=2)[0]
    torch.save(torch.load(path, weights_only=False)["model"], folder / "restored.pt")
    for part in folder.glob("reshard-*.pt"):
        part.unlink()


def ms_mixed_dtypes(folder: Path):  # harmless: converted to one dtype, and said so
    path = _single(folder)
    raw = torch.load(path, weights_only=False)
    raw["model"] = {k: (v.half() if "layers.1" in k else v) for k, v in raw["model"].items()}
    torch.save(raw, path)


def ms_parts_in_two_dtypes(folder: Path):  # harmless too
    paths = write_checkpoint(tiny_model("pre-ln"), folder, parts=2)
    raw = torch.load(paths[1], weights_only=False)
    raw["model"] = {k: v.half() if v.is_floating_point() else v for k, v in raw["model"].items()}
    torch.save(raw, paths[1])


METASEQ_CASES = [
    (ms_zero_byte, CheckpointError, "empty"),
    (ms_truncated, CheckpointError, "truncated or damaged"),
    (ms_lfs_pointer, CheckpointError, "git lfs pull"),
    (ms_wrong_format, CheckpointError, "not a PyTorch checkpoint"),
    (ms_missing_part, CheckpointError, r"part\(s\) 1 missing"),
    (ms_extra_part, CheckpointError, "do not belong"),
    (ms_foreign_part, CheckpointError, "disagree"),
    (ms_malicious, UnsafeCheckpointError, "nothing in it was executed"),
    (ms_not_opt, CheckpointError, "not a metaseq OPT checkpoint"),
    (ms_flat_damaged, CheckpointError, "needs"),
    (ms_duplicate_part, CheckpointError, "part 1 is there twice"),
    (ms_shapes_disagree, CheckpointError, "does not hold a 1/2 model-parallel share"),
    (ms_lone_half_part, CheckpointError, r"1/2 of the model each .* part\(s\) missing"),
    (ms_mixed_dtypes, None, None),
    (ms_parts_in_two_dtypes, None, None),
]


@pytest.mark.parametrize("damage, error, message", METASEQ_CASES, ids=[c[0].__name__ for c in METASEQ_CASES])
def test_metaseq_checkpoints(tmp_path, tokenizer, damage, error, message):
    source, destination = tmp_path / "ckpt", tmp_path / "converted"
    damage(source)
    if error is None:
        report = convert(source, destination)
        assert any("converted to" in note for note in report.notes)
        loaded = load_model(str(destination))
        expected = tiny_model("pre-ln")
        ids = torch.tensor([tokenizer("Hello there").input_ids])
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(ids).logits, expected(ids).logits, atol=0.05, rtol=0)
        return
    with pytest.raises(error, match=message):
        convert(source, destination)
    assert not destination.exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert not (source / "pwned").exists()  # nothing executed


def test_every_case_is_a_helpers_error():
    assert issubclass(ModelLoadError, HelpersError) and issubclass(CheckpointError, HelpersError)
    assert len(FOLDER_CASES) + len(METASEQ_CASES) == 30
