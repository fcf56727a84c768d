"""CTranslate2 as a bench peer: the same folder converted (cached), its greedy tokens and teacher-forced logits."""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ..memory.bytes import kv_cache_bytes_per_token
from ..opt.sizes import OPTSize

WEIGHT_FILES = ("config.json", ".safetensors", ".bin")  # what a conversion reads from the source folder


def missing_reason() -> str | None:
    """Why the CTranslate2 rows cannot run here (one line), or None where `ctranslate2` imports."""
    try:
        importlib.import_module("ctranslate2")
    except ImportError as error:
        return f"ctranslate2 is not installed ({error}); `pip install ctranslate2` adds the peer rows"
    except OSError as error:  # installed, but its native library does not load here
        return f"ctranslate2 does not load here ({error})"
    return None


def version() -> str:
    import ctranslate2

    return ctranslate2.__version__


def peer_label() -> str:
    """What the peer rows are, as their JSON and table say it."""
    return f"CTranslate2 {version()} (peer, not ours)"


def cache_root() -> Path:
    """Where converted models are kept: ~/.cache/opt-notebooks/ct2 (or under $XDG_CACHE_HOME)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "opt-notebooks" / "ct2"


def source_digest(folder: str | Path) -> str:
    """A digest of what a conversion reads from `folder`: the config and the weight files' names and contents
    (content, not mtime: a random-weight model written afresh with the same weights keeps its digest)."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.name.endswith(WEIGHT_FILES):
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
    return digest.hexdigest()[:24]


def converted(folder: str | Path, quantization: str, tokenizer: PreTrainedTokenizerBase,
              root: Path | None = None) -> tuple[Path, bool]:
    """The CTranslate2 model converted from `folder` with `quantization` ('float32', 'int8', ...), and whether it
    was converted now (False: taken from the cache). A folder without the tokenizer gets `tokenizer`'s files beside
    links to its own (the converter reads the vocabulary from them); a changed source gets a new conversion."""
    import ctranslate2

    root = root or cache_root()
    key = f"{source_digest(folder)}-{quantization}-ct2-{ctranslate2.__version__}"
    target = root / key
    if (target / "model.bin").is_file():
        return target, False
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".converting-") as work:
        source = Path(work) / "source"
        source.mkdir()
        for path in Path(folder).iterdir():
            (source / path.name).symlink_to(path.resolve())
        if not any((source / name).exists() for name in ("tokenizer.json", "vocab.json")):
            tokenizer.save_pretrained(source)
        ctranslate2.converters.TransformersConverter(str(source)).convert(
            str(Path(work) / "out"), quantization=quantization, force=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(Path(work) / "out", target)  # whole or not at all: a stopped conversion leaves no cache entry
    return target, True


class PeerModel:
    """A CTranslate2 Generator on the CPU, with what the benchmark asks of a model: greedy tokens, logits, bytes."""

    def __init__(self, path: Path, compute_type: str, size: OPTSize, threads: int | None = None, origin: str = ""):
        import ctranslate2

        self.path, self.compute_type, self.size = path, compute_type, size
        self.origin = origin  # where the converted model came from, for the bench's progress lines
        self.label = peer_label()
        self.device = torch.device("cpu")
        self.generator = ctranslate2.Generator(str(path), device="cpu", compute_type=compute_type,
                                               intra_threads=threads or torch.get_num_threads())

    def greedy(self, prompts_tokens: list[list[str]], new_tokens: int) -> list[list[int]]:
        """Exactly `new_tokens` greedy token ids after each prompt (given as the tokenizer's token strings, as
        CTranslate2 takes them); the end token held back until then, as in our rows."""
        results = self.generator.generate_batch(prompts_tokens, max_length=new_tokens, min_length=new_tokens,
                                                sampling_topk=1, include_prompt_in_result=False)
        return [r.sequences_ids[0] for r in results]

    def logits(self, ids: list[int]) -> torch.Tensor:
        """The logits at every position of `ids` in one forward pass (teacher-forced), float32 [len(ids), vocab]."""
        return torch.from_numpy(np.array(self.generator.forward_batch([ids]), dtype=np.float32)[0])

    def bytes_per_decode_step(self, context: float, batch: int) -> int:
        """The converted weights once (the size of model.bin), plus the float32 key/value cache of `context` tokens
        for each of the `batch` sequences."""
        weights = (self.path / "model.bin").stat().st_size
        return int(weights + kv_cache_bytes_per_token(self.size, "float32") * context * batch)


# ------------------------------------------------------------------------------------------ the bench's rows


def prepare_peer(quantization: str, compute_type: str):
    """A bench row's `prepare`: the context's folder converted (or taken from the cache), loaded as a PeerModel."""
    from ..opt.sizes import size_from_config

    def prepare(context) -> PeerModel:
        path, now = converted(context.folder(), quantization, context.tokenizer)
        origin = f"converted into {path}" if now else f"converted earlier, taken from the cache {path}"
        return PeerModel(path, compute_type, size_from_config(context.model.config), origin=origin)
    return prepare


def run_peer(model: PeerModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], new_tokens: int):
    """A bench row's `run`: greedy, exactly `new_tokens` tokens per prompt; (token ids, no first-token time)."""
    from ..opt.tokenizer import encode_prompt

    prompts_tokens = [tokenizer.convert_ids_to_tokens(encode_prompt(tokenizer, p)) for p in prompts]
    return model.greedy(prompts_tokens, new_tokens), None
