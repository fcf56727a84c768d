"""`serve`'s plan: the vLLM command for a model and a layout, each flag with the reason it is there."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..memory.bytes import GiB, weight_bytes
from ..opt.sizes import OPTSize, find_size, size_from_config
from ..units import human_bytes
from .keys import DEFAULT_KEY_ENV
from .layout import GPU_MEMORY_UTILIZATION, Layout, layout, refusal, smallest_layout, tensor_parallel_choices

SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # `vllm serve` is this module; the CPU build lacks the command
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vLLM's CPU attention (cpu_attn.py)


class ServePlanError(ValueError):
    """A layout or a request to listen that cannot work; the message says what would."""


@dataclass
class ServeRequest:
    """What `serve` was asked for."""

    model: str
    gpus: int | None = None  # per node; None: this machine's (0: the CPU build)
    nodes: int = 1
    gpu_memory: int | None = None
    context: int = 2048
    concurrency: int = 16
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str = DEFAULT_KEY_ENV
    has_key: bool = False  # whether that variable is set (the key itself never enters the plan)
    force: bool = False
    python: str = "python"


@dataclass
class ServePlan:
    """The command and the figures behind it (`serve --dry-run --json`)."""

    engine: str
    model: str
    size: str
    device: str
    command: list[str]
    environment: dict[str, str]  # variables the command needs; a key is named by its variable, never given
    why: list[tuple[str, str]]
    layout: Layout | None
    fits: bool
    url: str
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        shape = self.layout.as_dict() if self.layout else {"tensor_parallel_size": 1, "pipeline_parallel_size": 1,
                                                           "gpu_bytes_per_gpu": 0}
        return {"engine": self.engine, "model": self.model, "size": self.size, "device": self.device,
                "command": self.command, "environment": self.environment, "fits": self.fits, "url": self.url,
                **shape, "why": [{"flag": f, "why": w} for f, w in self.why], "notes": self.notes}


def model_size(model: str) -> tuple[OPTSize, str]:
    """(the architecture, what vLLM loads: a hub id or the folder as it is)."""
    folder = Path(model)
    if folder.is_dir():
        config = folder / "config.json"
        if not config.is_file():
            raise ServePlanError(f"{model} has no config.json: vLLM serves a Hugging Face folder (convert-metaseq "
                                 "writes one from metaseq checkpoints).")
        if not any((folder / name).exists() for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
            raise ServePlanError(f"{model} has no tokenizer: vLLM loads it from the folder. Save OPT's tokenizer "
                                 "there (helpers.opt.tokenizer.opt_tokenizer().save_pretrained(folder)).")
        from transformers import OPTConfig

        fields = json.loads(config.read_text())
        if fields.get("model_type") != "opt":
            raise ServePlanError(f"{model} holds a '{fields.get('model_type')}' model, not OPT.")
        return size_from_config(OPTConfig.from_pretrained(folder), name=folder.name), str(folder.resolve())
    size = find_size(model)
    if size is None:
        raise ServePlanError(f"'{model}' is neither an OPT size (opt-125m ... opt-66b, opt-175b) nor a folder.")
    return size, size.hub_id


def _folder_flags(source: str) -> list[tuple[list[str], str]]:
    """What a folder needs beyond `--model`: an architecture where its config.json names none (convert-metaseq
    before it wrote one), since vLLM picks its model class by it and would serve no completions without."""
    config = Path(source) / "config.json"
    if not config.is_file() or json.loads(config.read_text()).get("architectures"):
        return []
    return [(["--hf-overrides", '{"architectures": ["OPTForCausalLM"]}'],
             "config.json names no architecture; vLLM picks OPT's model class by it")]


def _listening(request: ServeRequest) -> list[tuple[str, str]]:
    if request.host not in LOCAL_HOSTS and not request.has_key and not request.force:
        raise ServePlanError(
            f"--host {request.host} would let other machines use the server, and ${request.api_key_env} holds no API "
            f"key. Set one (export {request.api_key_env}=...), keep the default --host 127.0.0.1, or pass --force.")
    where = "this machine only" if request.host in LOCAL_HOSTS else "other machines too"
    return [(f"--host {request.host}", f"listen for {where}"), (f"--port {request.port}", "the port clients connect to")]


def _gpu_flags(size: OPTSize, shape: Layout, request: ServeRequest) -> list[tuple[list[str], str]]:
    flags = [(["--dtype", "float16"], "OPT was trained and released in fp16")]
    if shape.tensor_parallel_size > 1:
        flags.append((["--tensor-parallel-size", str(shape.tensor_parallel_size)],
                      f"each layer split over {shape.tensor_parallel_size} GPUs of a node ({size.heads} heads, "
                      f"{size.heads // shape.tensor_parallel_size} each)"))
    if shape.pipeline_parallel_size > 1:
        flags.append((["--pipeline-parallel-size", str(shape.pipeline_parallel_size)],
                      f"the {size.layers} layers split over {shape.pipeline_parallel_size} nodes"))
        flags.append((["--distributed-executor-backend", "ray"],
                      "several nodes need Ray: `ray start --head` on this node, `ray start --address=HEAD:6379` on "
                      "the others, then run this on the head"))
    elif shape.tensor_parallel_size > 1:
        flags.append((["--distributed-executor-backend", "mp"], "one node: one process per GPU, no Ray"))
    flags += [(["--max-model-len", str(request.context)], f"{request.context} positions per sequence"),
              (["--max-num-seqs", str(request.concurrency)],
               f"{request.concurrency} sequences at once, each GPU holding "
               f"{human_bytes(shape.kv_cache_bytes_per_gpu)} of key/value cache for them"),
              (["--gpu-memory-utilization", str(GPU_MEMORY_UTILIZATION)],
               f"vLLM takes this share of each GPU's {human_bytes(shape.gpu_memory)}")]
    return flags


def _cpu_flags(size: OPTSize, request: ServeRequest) -> tuple[list[tuple[list[str], str]], dict[str, str]]:
    if size.head_dim not in CPU_HEAD_SIZES:
        raise ServePlanError(f"vLLM's CPU build computes attention for head sizes {', '.join(map(str, CPU_HEAD_SIZES))}"
                             f"; {size.name} has {size.head_dim}. Serve it on a GPU (--gpus N).")
    flags = [(["--dtype", "float32"], "the CPU build's exact arithmetic: the same tokens as the local model in fp32"),
             (["--max-model-len", str(request.context)], f"{request.context} positions per sequence")]
    return flags, {"VLLM_CPU_KVCACHE_SPACE": "1"}


def serve_plan(request: ServeRequest, gpus_here: int = 0, gpu_bytes_here: int = 0) -> ServePlan:
    """The vLLM command for `request` on `gpus_here` GPUs of `gpu_bytes_here` (unless the request says)."""
    size, source = model_size(request.model)
    gpus = request.gpus if request.gpus is not None else gpus_here
    listen = _listening(request)
    environment, notes = {}, []
    if request.has_key:
        environment["VLLM_API_KEY"] = f"${request.api_key_env}"  # the server reads its key from the environment
    if gpus == 0:
        flags, extra = _cpu_flags(size, request)
        environment.update(extra)
        shape, device, fits = None, "cpu", True
        notes.append(f"No GPU: vLLM's CPU build, {human_bytes(weight_bytes(size, 'float32'))} of fp32 weights in RAM "
                     "and 1 GiB of key/value cache (VLLM_CPU_KVCACHE_SPACE).")
    else:
        memory = request.gpu_memory or gpu_bytes_here or 80 * GiB
        if not (request.gpu_memory or gpu_bytes_here):
            notes.append("No --gpu-memory and no GPU here: planned for 80 GiB GPUs (A100/H100 80GB).")
        if request.gpus is None:
            shape = smallest_layout(size, request.nodes, memory, request.context, request.concurrency,
                                    limit=gpus) or layout(size, max(tensor_parallel_choices(size, gpus)),
                                                          request.nodes, memory, request.context, request.concurrency)
        else:
            try:
                shape = layout(size, gpus, request.nodes, memory, request.context, request.concurrency)
            except ValueError as exc:
                raise ServePlanError(str(exc)) from None
        if not shape.fits:
            raise ServePlanError(refusal(size, shape))
        flags, device, fits = _gpu_flags(size, shape, request), "cuda", shape.fits
    if source == "facebook/opt-175b":
        notes.append("OPT-175B is not on the Hugging Face Hub: Meta gives its metaseq files on request. Convert "
                     "them (python -m helpers convert-metaseq) and pass the folder as MODEL.")
    command = [request.python, "-m", SERVER_MODULE, "--model", source]
    why = [(f"--model {source}", "a hub id is downloaded by vLLM; a folder (convert-metaseq's, or a hub "
                                 "snapshot) is served as it is: config, tokenizer, tied output layer")]
    for words, reason in _folder_flags(source) + flags:
        command += words
        why.append((" ".join(words), reason))
    for words, reason in listen:
        command += words.split()
        why.append((words, reason))
    host = f"[{request.host}]" if ":" in request.host else request.host
    return ServePlan("vllm", source, size.name, device, command, environment, why, shape, fits,
                     f"http://{host}:{request.port}/v1", notes)
