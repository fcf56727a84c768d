"""The files of an FSDP-sharded checkpoint checked to be one complete save, each file in its place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import CheckpointError
from .parts import SHARD, place
from .sharded import PER_RANK_CFG, ShardedCheckpoint, ShardFile, read_shard_file


def _expected_name(files: list[Path], part: int, shard: int, parts: int) -> str:
    prefix = SHARD.match(files[0].name)["prefix"]
    return f"{prefix}-model_part-{part}-shard{shard}.pt" if parts > 1 or SHARD.match(files[0].name)["part"] \
        else f"{prefix}-shard{shard}.pt"


def _grid(paths: list[Path]) -> tuple[dict[tuple[int, int], Path], int, int]:
    grid: dict[tuple[int, int], Path] = {}
    for path in paths:
        where = place(path)
        if where in grid:
            raise CheckpointError(
                f"Shard {where[1]} of model part {where[0]} is there twice ({grid[where]} and {path}): keep the one "
                "that belongs to this checkpoint and move the other away."
            )
        grid[where] = path
    parts = max(p for p, _ in grid) + 1
    shards = max(s for _, s in grid) + 1
    return grid, parts, shards


def _missing(paths: list[Path], grid: dict, parts: int, shards: int) -> None:
    missing = [(p, s) for p in range(parts) for s in range(shards) if (p, s) not in grid]
    if missing:
        folder = paths[0].parent
        names = [_expected_name(paths, p, s, parts) for p, s in missing]
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        raise CheckpointError(
            f"{len(missing)} of the {parts * shards} files of this sharded checkpoint ({parts} model part(s) x {shards} "
            f"data-parallel shards) are missing from {folder}: {shown}. Every shard is needed: fetch the missing "
            "file(s)."
        )


def _rank_of(f: ShardFile) -> tuple[int, int, int] | None:
    """(part, shard, data-parallel size) the file's cfg says its writer had, if it says."""
    if not f.cfg:
        return None
    dist = f.cfg.get("distributed_training") or {}
    rank, world = dist.get("distributed_rank"), dist.get("distributed_world_size")
    mp = next((v for s in ("common", "model") if isinstance(f.cfg.get(s), dict)
               for v in [f.cfg[s].get("model_parallel_size")] if isinstance(v, int) and v > 0), 1)
    if not isinstance(rank, int) or not isinstance(world, int) or world % mp:
        return None
    return rank % mp, rank // mp, world // mp


def _same_run(cfg: dict | None, other: dict | None) -> str | None:
    """The first cfg field (besides the per-rank ones) two files disagree on."""
    if cfg is None or other is None:
        return None
    for section in sorted(set(cfg) | set(other), key=str):
        a, b = cfg.get(section), other.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                if (section, key) not in PER_RANK_CFG and a.get(key) != b.get(key):
                    return f"cfg {section}.{key}: {a.get(key)!r} vs {b.get(key)!r}"
        elif a != b:
            return f"cfg {section}"
    return None


def _check_places(files: dict[tuple[int, int], ShardFile], parts: int, shards: int) -> None:
    by_identity: dict[tuple[int, int], ShardFile] = {}
    for (part, shard), f in sorted(files.items()):
        said = _rank_of(f)
        if said is None:
            continue
        real_part, real_shard, dp = said
        if dp != shards:
            raise CheckpointError(
                f"{f.path} was written by a run with {dp} data-parallel shards per part, but {shards} were found: "
                "files of different checkpoints are mixed, or some are missing. Keep the files of one save."
            )
        suffix = ((f.cfg or {}).get("checkpoint") or {}).get("checkpoint_suffix")
        if isinstance(suffix, str) and "model_part-" in suffix and suffix.rsplit("-", 1)[-1].isdigit():
            real_part = int(suffix.rsplit("-", 1)[-1])
        if (real_part, real_shard) != (part, shard):
            twin = by_identity.get((real_part, real_shard)) or files.get((real_part, real_shard))
            same = f" (a copy of {twin.path.name}?)" if twin is not None and twin is not f else ""
            raise CheckpointError(
                f"{f.path} is named as shard {shard} of model part {part}, but its cfg says it holds shard {real_shard} "
                f"of model part {real_part}{same}: it was renamed or copied over another file. Fetch the original "
                f"{f.path.name} again (and check the others with --verify where Meta's sums exist)."
            )
        by_identity[(real_part, real_shard)] = f


def _check_one_save(all_files: list[ShardFile]) -> None:
    first = all_files[0]
    for f in all_files[1:]:
        differs = _same_run(first.cfg, f.cfg)
        if differs is None and f.updates != first.updates:
            differs = f"num_updates: {first.updates} vs {f.updates}"
        if differs:
            raise CheckpointError(
                f"{first.path.name} and {f.path.name} come from different training runs or saves ({differs}): "
                "every shard must come from the same save. Put the files of one checkpoint in a folder of their own "
                "(fetch the ones that belong with the others)."
            )


def _signature(f: ShardFile) -> list:
    return [(i.path, {k: (m["names"], m["shapes"], m["numels"]) for k, m in i.flats.items()}) for i in f.instances]


def _check_layout(files: list[list[ShardFile]]) -> None:
    reference = files[0][0]
    for part, shard_files in enumerate(files):
        first = shard_files[0]
        if [i.path for i in first.instances] != [i.path for i in reference.instances]:
            raise CheckpointError(f"{first.path} is wrapped into other FSDP instances than {reference.path.name}: "
                                  "they are not parts of one checkpoint. Keep the files of one save.")
        for f in shard_files[1:]:
            if _signature(f) != _signature(first):
                raise CheckpointError(f"{f.path}'s shard_metadata differs from {first.path.name}'s: they are not "
                                      "shards of one model part. Keep the files of one save.")
            if f.dtypes != first.dtypes:
                raise CheckpointError(f"{f.path} stores its weights in other dtypes than {first.path.name}: they are "
                                      "not shards of one save.")
        for inst in first.instances:
            for flat, meta in inst.flats.items():
                key = inst.key(flat)
                pieces = [f.stored[key] for f in shard_files]
                paddings = [f.padding[key] for f in shard_files]
                need = sum(meta["numels"])
                bad = [f for f in shard_files if not 0 <= f.padding[key] <= f.stored[key]]
                if bad or len(set(pieces)) > 1 or sum(pieces) - sum(paddings) != need:
                    culprit = (bad or [f for f in shard_files if f.stored[key] != max(set(pieces), key=pieces.count)]
                               or shard_files[-1:])[0]
                    raise CheckpointError(
                        f"{key} of model part {part} does not add up: its {len(shard_files)} shards hold "
                        f"{sum(pieces):,} values with {sum(paddings):,} of padding, but its shard_metadata lists "
                        f"{need:,} (the suspect: {culprit.path}). A shard is missing, damaged or from another "
                        "checkpoint: fetch it again."
                    )


def open_sharded(paths: list[Path], progress: Callable[[str], None] = lambda line: None) -> ShardedCheckpoint:
    """Read every file's metadata (not its weights) and check that the files are one save: all parts and
    shards there, each in its place, one run, one layout, every flat parameter adding up.

    Raises:
        CheckpointError: naming the file and what to do.
    """
    grid, parts, shards = _grid(paths)
    _missing(paths, grid, parts, shards)
    files: dict[tuple[int, int], ShardFile] = {}
    for i, where in enumerate(sorted(grid)):
        files[where] = read_shard_file(grid[where])
        if (i + 1) % 50 == 0 or i + 1 == len(grid):
            progress(f"read the shard_metadata of {i + 1}/{len(grid)} files")
    said = _rank_of(files[(0, 0)])
    if said is not None and said[2] > shards:
        _missing(paths, grid, parts, said[2])
    _check_places(files, parts, shards)
    ordered = [[files[(p, s)] for s in range(shards)] for p in range(parts)]
    _check_one_save([f for row in ordered for f in row])
    _check_layout(ordered)
    checkpoint = ShardedCheckpoint(ordered)
    if any(f.has_optimizer_state for f in checkpoint.all_files()):
        checkpoint.notes.append("The files hold optimizer state (last_optimizer_state); it was skipped (never read).")
    return checkpoint
