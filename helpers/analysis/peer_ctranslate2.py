"""CTranslate2 as a bench peer: the same folder converted (cached), its greedy tokens and teacher-forced logits."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import weakref
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
    """A CTranslate2 Generator on the CPU, with what the benchmark asks of a model: greedy tokens, logits, bytes.
    The Generator lives in a child process (`serve_generator`): in ours, once CTranslate2 had run, its OpenMP
    runtime (a second libgomp, bundled in its wheel) and torch's competed for the cores and every row of ours
    that ran after it slowed (measured: int8-weights-cpu 105 -> 66 tokens/s), while CTranslate2 ran as fast alone."""

    def __init__(self, path: Path, compute_type: str, size: OPTSize, threads: int | None = None, origin: str = ""):
        self.path, self.compute_type, self.size = path, compute_type, size
        self.origin = origin  # where the converted model came from, for the bench's progress lines
        self.label = peer_label()
        self.device = torch.device("cpu")
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from helpers.analysis.peer_ctranslate2 import serve_generator; serve_generator()",
             str(path), compute_type, str(threads or torch.get_num_threads())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        weakref.finalize(self, _stop, self.process)
        self._ask({"op": "ready"})

    def _ask(self, request: dict) -> dict:
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except (BrokenPipeError, ValueError):  # it ended before (a closed pipe raises ValueError once closed here)
            line = ""
        if not line:
            raise RuntimeError(f"CTranslate2's process for {self.path} ended (exit code {self.process.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"CTranslate2 ({self.path}): {answer['error']}")
        return answer

    def greedy(self, prompts_tokens: list[list[str]], new_tokens: int) -> list[list[int]]:
        """Exactly `new_tokens` greedy token ids after each prompt (given as the tokenizer's token strings, as
        CTranslate2 takes them); the end token held back until then, as in our rows."""
        return self._ask({"op": "greedy", "prompts": prompts_tokens, "new": new_tokens})["ids"]

    def logits(self, ids: list[int]) -> torch.Tensor:
        """The logits at every position of `ids` in one forward pass (teacher-forced), float32 [len(ids), vocab]."""
        with tempfile.TemporaryDirectory(prefix="ct2-logits-") as folder:
            out = os.path.join(folder, "logits.npy")
            self._ask({"op": "logits", "ids": ids, "out": out})
            return torch.from_numpy(np.load(out))

    def close(self) -> None:
        _stop(self.process)

    def bytes_per_decode_step(self, context: float, batch: int) -> int:
        """The converted weights once (the size of model.bin), plus the float32 key/value cache of `context` tokens
        for each of the `batch` sequences."""
        weights = (self.path / "model.bin").stat().st_size
        return int(weights + kv_cache_bytes_per_token(self.size, "float32") * context * batch)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.stdin.close()  # the child ends at the end of its input
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def serve_generator() -> None:
    """The child process: a Generator for argv's folder, compute type and threads, answering one JSON request
    per line of standard input (ready, greedy, logits) with one JSON line."""
    import ctranslate2

    path, compute_type, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    generator = ctranslate2.Generator(path, device="cpu", compute_type=compute_type, intra_threads=threads)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "greedy":
                results = generator.generate_batch(request["prompts"], max_length=request["new"],
                                                   min_length=request["new"], sampling_topk=1,
                                                   include_prompt_in_result=False)
                answer = {"ids": [r.sequences_ids[0] for r in results]}
            elif request["op"] == "logits":
                np.save(request["out"], np.array(generator.forward_batch([request["ids"]]), dtype=np.float32)[0])
                answer = {"ok": True}
            else:
                answer = {"ok": True}
        except Exception as exc:  # CTranslate2 raises its own types; the parent reports them
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


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
