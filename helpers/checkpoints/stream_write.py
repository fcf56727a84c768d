"""safetensors written tensor by tensor, and the record of finished files a resumed conversion trusts."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ..errors import CheckpointError

_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}
RESUME = ".helpers-resume.json"  # inside a partial output: the source it converts and the files finished
_CHUNK = 8 * 1024**2


def header(entries: list[tuple[str, tuple[int, ...], torch.dtype]]) -> bytes:
    """safetensors' header for tensors written in this order: the length, then JSON padded to 8 bytes."""
    offset, described = 0, {"__metadata__": {"format": "pt"}}
    for name, shape, dtype in entries:
        size = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
        described[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(described, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def write_safetensors(path: Path, entries: list[tuple[str, tuple[int, ...], torch.dtype]],
                      tensors: Iterable[tuple[str, torch.Tensor]]) -> dict:
    """Write `tensors` (in the order and with the shapes and dtypes of `entries`) to `path` under a temporary
    name, renamed once complete and on disk. safetensors' own save_file builds every tensor's bytes in memory
    first; this holds one tensor at a time. Returns {bytes, sha256}.
    """
    tmp = path.with_name(f".{path.name}.writing")
    digest = hashlib.sha256()
    expected = iter(entries)
    try:
        with open(tmp, "wb") as handle:
            head = header(entries)
            handle.write(head)
            digest.update(head)
            for name, tensor in tensors:
                want = next(expected)
                if (name, tuple(tensor.shape), tensor.dtype) != want:
                    raise CheckpointError(f"Internal error: {name} {tuple(tensor.shape)} {tensor.dtype} written where "
                                          f"{want} was announced.")
                data = tensor.contiguous().view(-1).view(torch.uint8).numpy()
                for start in range(0, len(data), _CHUNK):
                    piece = memoryview(data[start:start + _CHUNK])
                    handle.write(piece)
                    digest.update(piece)
            if next(expected, None) is not None:
                raise CheckpointError(f"Internal error: {path.name} ended before all its tensors were written.")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def file_sha256(path: Path, advance: Callable[[int], None] = lambda n: None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            advance(len(chunk))
    return digest.hexdigest()


def read_resume(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / RESUME).read_text())
        return record if isinstance(record, dict) and isinstance(record.get("done"), dict) else None
    except (OSError, ValueError):
        return None


def write_resume(folder: Path, source: dict, done: dict) -> None:
    """Record what is finished (written to a temporary name and renamed: never half a record)."""
    tmp = folder / f"{RESUME}.tmp"
    tmp.write_text(json.dumps({"source": source, "done": done}))
    os.replace(tmp, folder / RESUME)
