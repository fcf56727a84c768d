"""FSDP-sharded training checkpoints (the OPT-175B release layout): metaseq's own files converted through the
command line against metaseq's logits; the same weights re-split, merged to one part, with optimizer state or in
fp32; every damaged input named with its fix and nothing left behind; Meta's md5 sums; resuming."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED
from fsdp_writer import load, one_part, read_case, write_layout
from safetensors import safe_open
from test_metaseq_reference import FP16_TOLERANCE, FP32_TOLERANCE, max_differences

from helpers.checkpoints import release as releases
from helpers.checkpoints import sharded_convert
from helpers.errors import CheckpointError
from helpers.metaseq import convert

CASE = SHARED / "metaseq-reference" / "fsdp_sharded_mp2_dp2"


@pytest.fixture(scope="module")
def case() -> Path:
    if not (CASE / "case.json").is_file():
        pytest.skip(f"metaseq's reference checkpoints are not at {CASE.parent} (set OPT_SHARED_DIR)")
    return CASE


@pytest.fixture(scope="module")
def layout(case):
    return read_case(case)


@pytest.fixture(scope="module")
def reference(case, tmp_path_factory) -> dict[str, torch.Tensor]:
    """metaseq's files converted as they are (through the command line, the new --out form)."""
    out = tmp_path_factory.mktemp("reference") / "hf"
    done = subprocess.run([sys.executable, "-m", "helpers", "convert-metaseq", str(case), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "left" in done.stderr and "converting: [####################] 100%" in done.stderr  # progress, time left
    return out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            out.update({k: handle.get_tensor(k) for k in handle.keys()})
    return out


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name == "hf")


def test_metaseqs_files_convert_through_the_command_line_and_match_its_logits(case, reference):
    for dtype, tolerance in ((torch.float16, FP16_TOLERANCE), (torch.float32, FP32_TOLERANCE)):
        for inputs, difference in max_differences(reference, case, dtype).items():
            assert difference <= tolerance, (dtype, inputs, difference)
    model = weights(reference)
    assert "lm_head.weight" not in model  # tied: transformers' OPT reads it from the token embeddings
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(reference).tie_word_embeddings


@pytest.mark.parametrize("shards", [1, 3, 5, 7])
def test_re_split_with_metaseqs_padding_rule_converts_to_the_same_weights(tmp_path, layout, reference, shards):
    """Uneven shards: fairscale pads each flat parameter to a multiple of the shard count, so boundaries
    cut through tensors and the last shards end in padding (recorded per file)."""
    write_layout(layout, tmp_path / "ckpt", shards)
    padded = [load(p)["shard_metadata"]["param_metadata"][1]["params"]["flat_param_0"]["padding"]
              for p in sorted((tmp_path / "ckpt").glob("*model_part-0-*"))]
    if shards in (3, 7):
        assert any(padded)
    convert(tmp_path / "ckpt", tmp_path / "hf")
    got, want = weights(tmp_path / "hf"), weights(reference)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_one_model_part_named_without_model_part_converts_to_the_same_weights(tmp_path, layout, reference):
    """A folder of checkpoint_last-shardN.pt (one model part) is one checkpoint, not several."""
    files = write_layout(one_part(layout), tmp_path / "ckpt", 3)
    assert [p.name for p in files] == [f"checkpoint_last-shard{d}.pt" for d in range(3)]
    report = convert(tmp_path / "ckpt", tmp_path / "hf")
    assert report.model_parallel == 1 and report.data_parallel_shards == 3
    got, want = weights(tmp_path / "hf"), weights(reference)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_optimizer_state_is_skipped(tmp_path, layout, reference):
    write_layout(layout, tmp_path / "ckpt", 2, optimizer_state=True)
    assert "last_optimizer_state" in load(tmp_path / "ckpt" / "checkpoint_last-model_part-0-shard0.pt")
    report = convert(tmp_path / "ckpt", tmp_path / "hf")
    assert any("optimizer state" in note for note in report.notes)
    got, want = weights(tmp_path / "hf"), weights(reference)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_fp32_shards_convert_to_the_fp16_weights_upcast(tmp_path, layout, reference):
    write_layout(layout, tmp_path / "ckpt", 3, dtype=torch.float32)
    report = convert(tmp_path / "ckpt", tmp_path / "hf")
    assert report.dtype == "float32"
    got, want = weights(tmp_path / "hf"), weights(reference)
    assert all(torch.equal(got[k], want[k].float()) for k in want)


# ------------------------------------------------------------------------------------------ damaged inputs

def _damage(case: Path, folder: Path, how: str) -> Path:
    shutil.copytree(case, folder)
    for p in folder.iterdir():
        p.chmod(0o644)
    one, other = folder / "checkpoint_last-model_part-0-shard1.pt", folder / "checkpoint_last-model_part-1-shard1.pt"
    if how == "missing":
        other.unlink()
        return other
    if how == "duplicated":
        shutil.copy(folder / "checkpoint_last-model_part-0-shard0.pt", one)
    elif how == "other part":
        shutil.copy(other, one)
    elif how == "truncated":
        one.write_bytes(one.read_bytes()[: one.stat().st_size // 2])
    elif how == "no metadata":
        raw = load(one)
        del raw["shard_metadata"]
        torch.save(raw, one)
    elif how == "two runs":
        raw = load(one)
        raw["optimizer_history"][-1]["num_updates"] = 2000
        raw["cfg"]["common"]["seed"] = 7
        torch.save(raw, one)
    return one


@pytest.mark.parametrize("how, says", [
    ("missing", r"missing .*checkpoint_last-model_part-1-shard1\.pt.*fetch the missing"),
    ("duplicated", r"checkpoint_last-model_part-0-shard1\.pt is named as shard 1 of model part 0, but its cfg says "
                   r"it holds shard 0 of model part 0 \(a copy of checkpoint_last-model_part-0-shard0\.pt\?\).*Fetch"),
    ("other part", r"checkpoint_last-model_part-0-shard1\.pt is named as shard 1 of model part 0, but its cfg says it "
                   r"holds shard 1 of model part 1.*Fetch the original"),
    ("truncated", r"checkpoint_last-model_part-0-shard1\.pt cannot be read.*truncated.*fetch it again"),
    ("no metadata", r"checkpoint_last-model_part-0-shard1\.pt has no shard_metadata.*fetch the original file"),
    ("two runs", r"checkpoint_last-model_part-0-shard1\.pt come from different training runs or saves.*same save"),
])
def test_damaged_inputs_are_named_with_their_fix_and_leave_nothing(tmp_path, case, how, says):
    _damage(case, tmp_path / "ckpt", how)
    with pytest.raises(CheckpointError, match=says):
        convert(tmp_path / "ckpt", tmp_path / "hf")
    assert leftovers(tmp_path) == []


def test_a_lone_shard_passed_as_a_file_points_to_its_folder(tmp_path, case):
    shutil.copy(case / "checkpoint_last-model_part-0-shard0.pt", tmp_path)
    lone = tmp_path / "checkpoint_last-model_part-0-shard0.pt"
    with pytest.raises(CheckpointError, match=rf"{lone} is one FSDP shard.*convert-metaseq {tmp_path} --out"):
        convert(lone, tmp_path.parent / f"{tmp_path.name}-hf")
    with pytest.raises(CheckpointError, match="one FSDP shard.*4 such files.*--out"):
        convert(case / "checkpoint_last-model_part-0-shard0.pt", tmp_path / "hf")
    assert leftovers(tmp_path) == []


def test_the_files_can_be_given_one_by_one(tmp_path, case, reference):
    convert(sorted(case.glob("*-shard*.pt")), tmp_path / "hf")
    got, want = weights(tmp_path / "hf"), weights(reference)
    assert all(torch.equal(got[k], want[k]) for k in want)


# ------------------------------------------------------------------------------------------- Meta's md5 sums

def test_the_shipped_sums_are_metas(case):
    for name in ("opt175b_md5sum_shards.csv", "opt66b_md5sum_shards.csv"):
        assert (releases._SUMS / name).read_bytes() == (case.parent / "release-md5" / name).read_bytes()
    sums = releases.RELEASES[0].sums()
    assert len(sums) == 992 and sums["checkpoint_last-model_part-0-shard0.pt"] == "4119001fb6b8dc665f85167db429f9ac"
    assert releases.recognise(set(sums)).name == "OPT-175B"
    assert releases.recognise({p.name for p in case.glob("*.pt")}) is None  # 4 of 992 names: not the release
    assert releases.recognise(set(releases.RELEASES[1].sums())) is None  # anyone's 8 parts are named so


@pytest.fixture
def known_release(tmp_path, case, monkeypatch):
    """The reference case as if Meta had published its sums (one of them differing from the file's)."""
    folder = tmp_path / "download"
    shutil.copytree(case, folder)
    csv = tmp_path / "sums.csv"
    rows = [f"{p.name},{releases.file_md5(p, lambda n: None)}" for p in sorted(folder.glob("*-shard*.pt"))]
    rows[2] = rows[2].split(",")[0] + ",0123456789abcdef0123456789abcdef"
    csv.write_text("shard,md5sum\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(releases, "RELEASES", (releases.Release("TEST-RELEASE", str(csv), True),))
    monkeypatch.setattr(sharded_convert, "recognise", releases.recognise)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return folder


def test_a_file_whose_md5_differs_from_metas_stops_the_conversion(tmp_path, known_release):
    lines = []
    with pytest.raises(CheckpointError, match=r"corrupt \(md5 differs from Meta's\): checkpoint_last-model_part-1-shard0\.pt"
                                              r".*download the missing and corrupt files again.*--verify"):
        convert(known_release, tmp_path / "hf", progress=lines.append)
    assert any(line.startswith("md5 of 4 files: [") for line in lines)
    assert leftovers(tmp_path) == []
    convert(known_release, tmp_path / "hf", verify=False)  # --no-verify: the user's call


def test_verify_names_missing_extra_and_corrupt_files(tmp_path, known_release, capsys):
    from helpers.cli.main import main

    (known_release / "checkpoint_last-model_part-0-shard1.pt").unlink()
    (known_release / "checkpoint_last-model_part-9-shard0.pt").write_bytes(b"x")
    assert main(["convert-metaseq", "--verify", str(known_release)]) == 1
    err = capsys.readouterr().err
    assert "missing: checkpoint_last-model_part-0-shard1.pt" in err
    assert "corrupt (md5 differs from Meta's): checkpoint_last-model_part-1-shard0.pt" in err
    assert "not part of the release: checkpoint_last-model_part-9-shard0.pt, inputs.pt, logits.pt" in err


def test_verify_of_a_good_download(tmp_path, case, monkeypatch, capsys):
    from helpers.cli.main import main

    csv = tmp_path / "sums.csv"
    csv.write_text("shard,md5sum\n" + "".join(f"{p.name},{releases.file_md5(p, lambda n: None)}\n"
                                               for p in sorted(case.glob("*.pt"))))
    monkeypatch.setattr(releases, "RELEASES", (releases.Release("TEST-RELEASE", str(csv), True),))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["convert-metaseq", "--verify", str(case)]) == 0
    assert "all 6 files of Meta's TEST-RELEASE release match its md5 sums" in capsys.readouterr().out
    assert main(["convert-metaseq", "--verify", str(case)]) == 0
    assert "6 from an earlier check" in capsys.readouterr().out  # unchanged files are not hashed twice


# ------------------------------------------------------------------------------------------------ resuming

def test_an_interrupted_conversion_resumes_from_its_verified_files(tmp_path, layout, reference, monkeypatch):
    write_layout(layout, tmp_path / "ckpt", 3)
    written = []
    real = sharded_convert.write_safetensors

    def interrupted_after_two(path, entries, tensors):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path.name)
        return real(path, entries, tensors)

    monkeypatch.setattr(sharded_convert, "write_safetensors", interrupted_after_two)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        convert(tmp_path / "ckpt", tmp_path / "hf", progress=lines.append)
    assert not (tmp_path / "hf").exists()  # nothing that looks complete
    (partial,) = [p for p in tmp_path.iterdir() if p.name.startswith(".hf.partial-")]
    assert sorted(p.name for p in partial.glob("*.safetensors")) == written
    assert not (partial / "conversion.json").exists()
    assert any("Run the same command again" in line for line in lines)

    monkeypatch.setattr(sharded_convert, "write_safetensors", real)
    report = convert(tmp_path / "ckpt", tmp_path / "hf")  # the same process, as a notebook's kernel would
    assert any("2 of 3 output files were finished and verified" in note for note in report.notes)
    got, want = weights(tmp_path / "hf"), weights(reference)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert leftovers(tmp_path) == ["hf"]


def test_a_damaged_finished_file_is_redone_on_resume(tmp_path, layout, reference, monkeypatch):
    write_layout(layout, tmp_path / "ckpt", 2)
    real, calls = sharded_convert.write_safetensors, []

    def interrupted(path, entries, tensors):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(path.name)
        return real(path, entries, tensors)

    monkeypatch.setattr(sharded_convert, "write_safetensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(tmp_path / "ckpt", tmp_path / "hf")
    (partial,) = [p for p in tmp_path.iterdir() if p.name.startswith(".hf.partial-")]
    damaged = partial / calls[0]
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(sharded_convert, "write_safetensors", real)
    report = convert(tmp_path / "ckpt", tmp_path / "hf")
    assert any("1 of 3 output files were finished and verified" in note and "1 redone" in note for note in report.notes)
    got, want = weights(tmp_path / "hf"), weights(reference)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_killed_conversion_resumes_in_the_next_process(tmp_path, layout, reference):
    """SIGKILL: no cleanup ran; the next run finds the partial output of a process that is gone."""
    write_layout(layout, tmp_path / "ckpt", 2)
    script = (
        "import os, signal, sys\n"
        "from helpers.checkpoints import sharded_convert as s\n"
        "real, n = s.write_safetensors, []\n"
        "def once(path, entries, tensors):\n"
        "    if n: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    n.append(1); return real(path, entries, tensors)\n"
        "s.write_safetensors = once\n"
        "from helpers.metaseq import convert\n"
        f"convert({str(tmp_path / 'ckpt')!r}, {str(tmp_path / 'hf')!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr
    report = convert(tmp_path / "ckpt", tmp_path / "hf")
    assert any("1 of 3 output files were finished and verified" in note for note in report.notes)
    got, want = weights(tmp_path / "hf"), weights(reference)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_too_little_disk_is_said_before_anything_is_written(tmp_path, case, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(sharded_convert.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(CheckpointError, match=r"needs .* of free disk, but .* has 1000 B: free .* another disk"):
        convert(case, tmp_path / "hf")
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- OPT-175B

def test_the_size_table_and_the_planner_know_opt_175b(capsys):
    from helpers.cli.main import main
    from helpers.errors import UnknownModelError
    from helpers.loading.sources import resolve_source
    from helpers.opt.sizes import SIZES, get_size

    size = get_size("opt-175b")
    assert (size.layers, size.d_model, size.heads, size.ffn) == (96, 12288, 96, 49152)
    assert 174e9 < size.parameter_count() < 176e9
    assert "opt-175b" not in SIZES  # not on the hub: not offered for download
    assert main(["plan", "--model", "opt-175b", "--gpus", "8", "--gpu-memory", "80GiB", "--cpu-memory", "1000GiB"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[3:] if line.strip() and not line.startswith("Best")}
    assert "fits" in rows["fp16-multi-gpu"] and "fits" in rows["nf4-multi-gpu"] and "too big" in rows["fp16"]
    with pytest.raises(UnknownModelError, match="opt-175b is not on the Hugging Face Hub.*convert-metaseq"):
        resolve_source("opt-175b")
