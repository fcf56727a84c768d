"""Converting FSDP-sharded files one FSDP instance at a time: bounded memory, disk checked, resumable."""

from __future__ import annotations

import errno
import json
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..memory.dtypes import resolve_dtype
from ..units import human_bytes
from .architecture import resolve_architecture
from .destination import claim, mark_as_output, publish, set_aside
from .merge import DROPPED, common_dtype, hf_name, merge_tensor, part_states
from .pages import trim
from .progress import ProgressMeter
from .release import recognise, verify_release
from .report import ConversionReport
from .sharded import ShardedCheckpoint
from .sharded_check import open_sharded
from .stream_write import RESUME, file_sha256, read_resume, write_resume, write_safetensors
from .write import check_against_model, hf_config, save_companions

_COMPANIONS = 64 * 1024**2  # config, generation config and tokenizer, with room to spare


@dataclass
class _Output:
    """One output file: the merged tensors of one FSDP instance."""

    file: str
    label: str
    instance: int  # its index among the checkpoint's FSDP instances
    source_bytes: int  # what is read for it, across the parts
    names: list[str]  # metaseq names, in the instance's order
    entries: list[tuple[str, tuple[int, ...], torch.dtype]]  # Hugging Face name, shape, dtype, as written

    @property
    def bytes(self) -> int:
        return sum(torch.Size(s).numel() * torch.empty(0, dtype=d).element_size() for _, s, d in self.entries)


def _plan(checkpoint: ShardedCheckpoint, states: list[dict], dtype: torch.dtype) -> list[_Output]:
    """What each FSDP instance becomes, worked out on meta tensors (shapes only)."""
    outputs = []
    for index, inst in enumerate(checkpoint.instances):
        names = [n for meta in inst.flats.values() for n in meta["names"]] + [c for _, c in inst.ties]
        if index == 0:
            names += checkpoint.files[0][0].buffers
        names = [n for n in names if n not in DROPPED]
        entries = []
        for name in names:
            for merged, tensor in merge_tensor(name, [s[name] for s in states]).items():
                entries.append((hf_name(merged), tuple(tensor.shape), dtype if tensor.is_floating_point() else tensor.dtype))
        read = sum(sum(meta["numels"]) * part[0].dtypes[inst.key(flat)].itemsize
                   for part in checkpoint.files for flat, meta in part[0].instances[index].flats.items())
        if entries:
            outputs.append(_Output("", inst.path or "embeddings and final layer norm", index, read, names, entries))
    for i, out in enumerate(outputs, start=1):
        out.file = f"model-{i:05d}-of-{len(outputs):05d}.safetensors"
    return outputs


def _fingerprint(checkpoint: ShardedCheckpoint, outputs: list[_Output]) -> dict:
    """What a partial output was converting: the same files (names, sizes, times) to the same outputs."""
    files = [[f.path.name, f.path.stat().st_size, f.path.stat().st_mtime_ns] for f in checkpoint.all_files()]
    return {"files": files, "outputs": [[o.file, [[n, list(s), str(d)] for n, s, d in o.entries]] for o in outputs]}


def _verified(tmp: Path, outputs: list[_Output], progress: Callable[[str], None], say: Callable[[str], None]) -> dict:
    """The finished files of a resumed partial output whose size and sha256 are still what was recorded;
    everything else in it is removed."""
    record = read_resume(tmp) or {"done": {}}
    wanted = {o.file for o in outputs}
    listed = {name: info for name, info in record["done"].items() if name in wanted and (tmp / name).is_file()}
    with ThreadPoolExecutor(max_workers=4) as pool:
        sums = dict(zip(listed, pool.map(lambda n: file_sha256(tmp / n), listed)))
    done = {n: info for n, info in listed.items()
            if (tmp / n).stat().st_size == info.get("bytes") and sums[n] == info.get("sha256")}
    for entry in tmp.iterdir():
        if entry.name not in done and entry.name not in (RESUME, ".helpers-partial.json"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    say(f"Resumed the interrupted conversion in {tmp}: {len(done)} of {len(outputs)} output files were finished "
        f"and verified (size and sha256){'' if len(done) == len(listed) else f', {len(listed) - len(done)} redone'}.")
    return done


def _check_disk(folder: Path, needed: int, dst: Path) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise _DiskShort(f"Converting to {dst} needs {human_bytes(needed)} of free disk, but {folder} has "
                         f"{human_bytes(free)}: free {human_bytes(needed - free)} there, or choose an output folder on "
                         "another disk (--out).")


class _DiskShort(CheckpointError):
    pass


def _tensors(out: _Output, parts: list[dict[str, torch.Tensor]], dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    for name in out.names:
        for merged, tensor in merge_tensor(name, [p[name] for p in parts]).items():
            yield hf_name(merged), tensor.to(dtype) if tensor.is_floating_point() else tensor


def convert_sharded(paths: list[Path], dst: Path, *, size: str | None, num_heads: int | None, dtype,
                    overwrite: bool, verify: bool, progress: Callable[[str], None],
                    say: Callable[[str], None], notes: list[str]) -> ConversionReport:
    """Convert FSDP-sharded files (already found, destination already checked). Peak memory: one FSDP instance
    across the model parts (175B: one decoder layer, about 3.6 GB in fp16) plus the largest merged tensor."""
    started = time.monotonic()
    release = recognise({p.name for p in paths})
    if release is not None and verify:
        progress(f"These are the files of Meta's {release.name} release: checking them against Meta's md5 sums first "
                 "(--no-verify skips this).")
        progress(verify_release(paths[0].parent, release, progress=progress).summary())
    checkpoint = open_sharded(paths, progress)
    for note in checkpoint.notes:
        say(note)
    parts = checkpoint.meta_parts()
    arch, split = resolve_architecture(parts, size, num_heads, say)
    torch_dtype = common_dtype(parts, resolve_dtype(dtype, "cpu") if dtype is not None else None, say)
    states = part_states(parts, arch, split)
    outputs = _plan(checkpoint, states, torch_dtype)
    fingerprint = _fingerprint(checkpoint, outputs)
    total = sum(o.bytes for o in outputs)
    shards = len(checkpoint.files[0])
    progress(f"{len(paths)} files ({split} model part(s) x {shards} shards), {arch.describe()}: writing "
             f"{human_bytes(total)} in {len(outputs)} files")
    tmp = claim(dst, say, resumable=lambda entry: (read_resume(entry) or {}).get("source") == fingerprint)
    done: dict = {}
    try:
        if read_resume(tmp) is not None:
            done = _verified(tmp, outputs, progress, say)
        write_resume(tmp, fingerprint, done)
        _check_disk(tmp, total - sum(done[o.file]["bytes"] for o in outputs if o.file in done) + _COMPANIONS, dst)
        meter = ProgressMeter("converting", sum(o.source_bytes for o in outputs), progress, every=10.0)
        meter.advance(sum(o.source_bytes for o in outputs if o.file in done))
        for index, out in enumerate(outputs):
            if out.file in done:
                continue
            detail = f"{out.label}, {index + 1}/{len(outputs)}"
            merged = [checkpoint.read_instance(out.instance, k, lambda n, d=detail: meter.advance(n, f"reading {d}"))
                      for k in range(split)]
            info = write_safetensors(tmp / out.file, out.entries, _tensors(out, merged, torch_dtype))
            del merged  # before the next instance is read: one instance at a time
            trim()
            done[out.file] = info
            write_resume(tmp, fingerprint, done)
            meter.advance(0, f"written {detail}", force=True)
        weight_map = {name: o.file for o in outputs for name, _, _ in o.entries}
        index_file = tmp / "model.safetensors.index.json"
        index_file.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        files = [o.file for o in outputs] + [index_file.name]
        config = hf_config(arch, torch_dtype)
        count = check_against_model(tmp, files, arch, config)
        save_companions(tmp, config)
        (tmp / RESUME).unlink()
        report = ConversionReport(
            source=[str(p) for p in paths], destination=str(dst),
            layout=f"FSDP-sharded, {split}-way model parallel x {shards} data-parallel shards", model_parallel=split,
            architecture=asdict(arch), parameters=count, dtype=str(torch_dtype).removeprefix("torch."), files=files,
            notes=notes, data_parallel_shards=shards, seconds=round(time.monotonic() - started, 3))
        mark_as_output(tmp, report.as_dict())
        publish(tmp, dst, overwrite)
    except BaseException as exc:
        full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        if done and (isinstance(exc, (KeyboardInterrupt, _DiskShort)) or full):
            set_aside(tmp)
            progress(f"Stopped: {len(done)} of {len(outputs)} output files are finished in {tmp}. Run the same "
                     f"command again to go on from there{' once there is free space' if full else ''} (or remove "
                     "that folder to give up).")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise CheckpointError(f"The disk ran out of space while writing {dst}: free some space (the whole output "
                                  f"is {human_bytes(total)}) or choose a folder on another disk.") from None
        raise
    return report
