"""Loading one metaseq checkpoint file with `torch.load(weights_only=True)` and an allow-list: nothing runs."""

from __future__ import annotations

import argparse
import collections
import pathlib
import pickle
import re
import typing
from pathlib import Path

import torch

from ..errors import CheckpointError, UnsafeCheckpointError
from ..loading.fetch import check_not_lfs_pointer


class _PickledState:
    """Stand-in for a class a metaseq `cfg` pickles (omegaconf's containers and nodes): unpickling only
    stores the pickled attributes in `__dict__`; no code of the original class exists or runs."""


class _OmegaDict(_PickledState):
    pass


class _OmegaList(_PickledState):
    pass


class _OmegaNode(_PickledState):
    pass


class _OmegaMetadata(_PickledState):
    pass


def _numpy_globals() -> list:
    """numpy scalars (a training run's `best_loss`, say) are data too: their rebuild functions are safe."""
    import numpy

    multiarray = numpy._core.multiarray if hasattr(numpy, "_core") else numpy.core.multiarray
    allowed = [(numpy.dtype, "numpy.dtype"), (multiarray.scalar, "numpy.core.multiarray.scalar"),
               (multiarray.scalar, "numpy._core.multiarray.scalar")]
    dtypes = getattr(numpy, "dtypes", None)
    if dtypes is not None:
        allowed += [(getattr(dtypes, name), f"numpy.dtypes.{name}") for name in dir(dtypes) if name.endswith("DType")]
    return allowed


def _allowed_globals() -> list:
    """Everything a metaseq checkpoint may name besides tensors: argparse.Namespace, plain Python types,
    and omegaconf's classes mapped to inert stand-ins (so omegaconf need not be installed)."""
    omegaconf = [(_OmegaDict, "omegaconf.dictconfig.DictConfig"), (_OmegaList, "omegaconf.listconfig.ListConfig"),
                 (_OmegaMetadata, "omegaconf.base.ContainerMetadata"), (_OmegaMetadata, "omegaconf.base.Metadata")]
    omegaconf += [(_OmegaNode, f"omegaconf.nodes.{name}") for name in (
        "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode", "ValueNode",
        "UnionNode", "EnumNode")]
    simple = [argparse.Namespace, collections.defaultdict, collections.OrderedDict, typing.Any,
              dict, list, tuple, set, frozenset, int, float, bool, str, bytes, complex,
              pathlib.PosixPath, pathlib.PurePosixPath]
    return simple + omegaconf + _numpy_globals()


def plain(value):
    """A cfg as plain dicts and lists (Namespaces and omegaconf containers unwrapped)."""
    if isinstance(value, _OmegaDict):
        content = value.__dict__.get("_content")
        return {k: plain(v) for k, v in content.items()} if isinstance(content, dict) else content
    if isinstance(value, _OmegaList):
        content = value.__dict__.get("_content")
        return [plain(v) for v in content] if isinstance(content, list) else content
    if isinstance(value, _OmegaNode):
        return plain(value.__dict__.get("_val"))
    if isinstance(value, argparse.Namespace):
        return {k: plain(v) for k, v in vars(value).items()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def load_checkpoint_file(path: str | Path) -> dict:
    """`torch.load` of one checkpoint file with `weights_only=True` and an explicit allow-list: tensors,
    argparse.Namespace and what a metaseq `cfg` holds. Any other pickled global is refused before it can run.

    Raises:
        UnsafeCheckpointError: the file names a global outside the allow-list (nothing was executed).
        CheckpointError: missing, empty, an LFS pointer, truncated or not a PyTorch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): its download or copy was interrupted. Fetch it again.")
    check_not_lfs_pointer(path)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":  # torch.save's zip archive, or a legacy pickle
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (it starts with {magic!r}).")
    with torch.serialization.safe_globals(_allowed_globals()):
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # pre-zip format: no mmap
        except pickle.UnpicklingError as exc:
            message = str(exc)
            name = re.search(r"GLOBAL (\S+)|function (\S+)|got (<class '[^']+'>)", message)
            if name or "allowlisted" in message or "blocked" in message:
                what = next((g for g in name.groups() if g), "a global") if name else "a global"
                raise UnsafeCheckpointError(
                    f"{path} asks to run code when loaded ({what}), which a metaseq checkpoint never needs: it holds "
                    "only tensors and its configuration. Loading was refused and nothing in it was executed. "
                    "Use the original file from its publisher."
                ) from None
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({exc}).") from None
        except MemoryError:
            raise
        except Exception as exc:  # the unpickler and the zip reader fail in many ways on damaged files
            raise CheckpointError(
                f"{path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). It is probably "
                "truncated or damaged (an interrupted download?): fetch it again."
            ) from None

