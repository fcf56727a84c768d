"""A lean OPT forward for one sequence on the CPU: the fast path for batch-1 decoding there (fp32, bf16, int8)."""

from __future__ import annotations

import contextlib
import threading
import time
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from transformers import OPTForCausalLM

from ...errors import ModelUnloadedError
from ...opt.sizes import POSITION_OFFSET
from .cpu_int8 import Int8WeightLinear
from .matvec_kernel import fused_product

_ATTR = "_helpers_cpu_engine"
_BUILDING = threading.Lock()  # two threads must not repack one model's q/k/v at the same time


@lru_cache(maxsize=1)
def numpy_blas_is_faster() -> bool:
    """Time a 64 MiB matrix-vector product both ways once per process (about 50 ms)."""
    w = np.random.default_rng(0).standard_normal((8192, 2048), dtype=np.float32)
    x = np.ones(2048, dtype=np.float32)
    tw, tx = torch.from_numpy(w), torch.from_numpy(x)[None]

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    return best(lambda: w @ x) < best(lambda: F.linear(tx, tw))


ENGINE_DTYPES = (torch.float32, torch.bfloat16)  # the weights' dtypes; the engine computes in fp32 for both


def supported(model: OPTForCausalLM, batch: int) -> bool:
    """The engine runs one sequence of a plain (undispatched, not bitsandbytes-quantized) fp32 or bf16 model on
    the CPU, or of an fp32 one whose Linears hold weight-only int8 (`cpu_int8`)."""
    if not (batch == 1 and model.device.type == "cpu" and model.dtype in ENGINE_DTYPES
            and not hasattr(model, "hf_device_map") and getattr(model, "hf_quantizer", None) is None
            and model.config.activation_function == "relu" and model.config.enable_bias):
        return False
    if has_unmerged_adapter(model):  # the engine reads the plain weights, not an adapter's layers beside them
        return False
    linears = [model.lm_head] + [m for layer in model.model.decoder.layers for m in (
        layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.out_proj,
        layer.fc1, layer.fc2)]
    if all(type(m) is Int8WeightLinear for m in linears):
        return model.dtype == torch.float32
    return all(type(m) is torch.nn.Linear and m.weight.dtype == model.dtype for m in linears)


def has_unmerged_adapter(model: OPTForCausalLM) -> bool:
    """Whether peft's layers (a LoRA adapter applied, not merged) are in the model."""
    return any(type(m).__module__.startswith("peft.") for m in model.modules())


def _fingerprint(model: OPTForCausalLM) -> tuple:
    """Where every parameter's memory is: it changes when the model is moved, cast or reloaded."""
    return tuple(p.data_ptr() for p in model.parameters())


def engine_for(model: OPTForCausalLM) -> CpuEngine:
    """The model's engine, built once (it repacks q/k/v in place; the values do not change) and rebuilt
    if the model's tensors were replaced since (`model.to(...)`, a dtype round trip, loaded weights)."""
    with _BUILDING:
        engine = getattr(model, _ATTR, None)
        if engine is None or engine.fingerprint != _fingerprint(model):
            engine = CpuEngine(model)
            engine.fingerprint = _fingerprint(model)
            setattr(model, _ATTR, engine)
        return engine


def drop_engine(model: torch.nn.Module) -> None:
    """Forget a model's engine (it holds views of the weights): `unload` calls this. A generation still
    running on it stops at its next step with `ModelUnloadedError`."""
    engine = model.__dict__.pop(_ATTR, None)
    if engine is not None:
        engine.dropped = True


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _product(weight: torch.Tensor, bias: torch.Tensor | None, numpy_blas: bool):
    """x [t, in] fp32 -> x @ weight.T (+ bias), fp32: numpy's BLAS for fp32 where it is faster (a single row as a
    matrix-vector product), else torch's; bf16 weights through the fused kernel (`fused_product`)."""
    if weight.dtype == torch.bfloat16:  # read as it is, two bytes a weight, widened in registers by the kernel
        weight, bias = weight.detach(), None if bias is None else bias.detach().float()
        return lambda x: fused_product(x, weight, None, bias)
    if not numpy_blas:
        weight, bias = weight.detach(), None if bias is None else bias.detach()
        return lambda x: F.linear(x, weight, bias)
    w, b = _np(weight), None if bias is None else _np(bias)

    def product(x: torch.Tensor) -> torch.Tensor:
        a = x.numpy()
        y = w @ a[0] if a.shape[0] == 1 else a @ w.T
        if b is not None:
            y += b
        return torch.from_numpy(y).view(x.shape[0], -1)
    return product


def _packed_qkv(attn, d: int, numpy_blas: bool):
    """q, k, v as one product ([3d, d]: one matrix read instead of three), the modules' own weights pointed
    at its slices, so transformers' forward keeps working on the same memory."""
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    if isinstance(attn.q_proj, Int8WeightLinear):
        return Int8WeightLinear.packed(projections)
    qkv_w = torch.cat([p.weight for p in projections]).detach().contiguous()
    qkv_b = torch.cat([p.bias for p in projections]).detach().contiguous()
    for i, proj in enumerate(projections):
        proj.weight.data = qkv_w[i * d:(i + 1) * d]
        proj.bias.data = qkv_b[i * d:(i + 1) * d]
    return _product(qkv_w, qkv_b, numpy_blas)


def _fp32(norm: torch.nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer norm's parameters in fp32 (the model's own tensors where they are fp32 already)."""
    return norm.weight.detach().float(), norm.bias.detach().float()


def _of(module: torch.nn.Module, numpy_blas: bool):
    """The product a Linear (or an `Int8WeightLinear`, itself callable) computes."""
    return module if isinstance(module, Int8WeightLinear) else _product(module.weight, module.bias, numpy_blas)


class _Layer:
    def __init__(self, layer, d: int, numpy_blas: bool):
        attn = layer.self_attn
        self.qkv = _packed_qkv(attn, d, numpy_blas)
        self.out, self.fc1, self.fc2 = (_of(m, numpy_blas) for m in (attn.out_proj, layer.fc1, layer.fc2))
        self.norm1, self.norm2 = _fp32(layer.self_attn_layer_norm), _fp32(layer.final_layer_norm)


class CpuEngine:
    """OPT's decoder for one sequence: `prefill(ids)` then `step(token)`, each returning next-token logits.
    Its arithmetic is fp32 whatever the weights' dtype (fp32, bf16, or int8 with scales): bf16 and int8 weights
    are widened as they are read, so they cost fewer bytes per token and round only the weights."""

    def __init__(self, model: OPTForCausalLM):
        config, decoder = model.config, model.model.decoder
        self.d, self.heads = config.hidden_size, config.num_attention_heads
        self.head_dim = self.d // self.heads
        self.scaling = self.head_dim ** -0.5
        self.pre_norm = config.do_layer_norm_before
        self.eps = decoder.layers[0].self_attn_layer_norm.eps
        self.max_positions = config.max_position_embeddings
        self.dtype = torch.float32  # of the activations and the cache
        self.embed = decoder.embed_tokens.weight.detach()
        self.positions = decoder.embed_positions.weight.detach()
        int8 = isinstance(model.lm_head, Int8WeightLinear)  # torch computes its products: it keeps torch's threads
        blas = self.numpy_blas = model.dtype == torch.float32 and not int8 and numpy_blas_is_faster()
        self.project_in = _of(decoder.project_in, blas) if decoder.project_in is not None else None
        self.project_out = _of(decoder.project_out, blas) if decoder.project_out is not None else None
        norm = decoder.final_layer_norm
        self.final_norm = _fp32(norm) if norm is not None else None
        self.lm_head = _of(model.lm_head, blas)
        self.layers = [_Layer(layer, self.d, blas) for layer in decoder.layers]
        self.dropped = False  # set when the model is unloaded: its sequences refuse to go on

    def __deepcopy__(self, memo: dict) -> None:
        # Its arrays are views of the model's weights that a deep copy would turn into full copies, all
        # for an engine the copy cannot use (its tensors are elsewhere): the copy builds its own instead.
        return None

    # -- pieces

    def _norm(self, x: torch.Tensor, params) -> torch.Tensor:
        return F.layer_norm(x, (self.d,), params[0], params[1], self.eps)

    def _attention(self, layer: _Layer, i: int, h: torch.Tensor, start: int, cache: torch.Tensor) -> torch.Tensor:
        t = h.shape[0]
        qkv = layer.qkv(h)  # [t, 3d]
        q, k, v = (qkv[:, j * self.d:(j + 1) * self.d].view(t, self.heads, self.head_dim).transpose(0, 1)
                   for j in range(3))
        end = start + t
        cache[i, 0, :, start:end] = k
        cache[i, 1, :, start:end] = v
        keys, values = cache[i, 0, :, :end], cache[i, 1, :, :end]
        out = F.scaled_dot_product_attention((q * self.scaling)[None], keys[None], values[None],
                                             is_causal=t > 1, scale=1.0)[0]
        return layer.out(out.transpose(0, 1).reshape(t, self.d))

    @torch.inference_mode()
    def forward(self, ids: list[int], start: int, cache: torch.Tensor) -> torch.Tensor:
        """The logits after `ids`, placed from position `start` on, their keys and values written to `cache`."""
        x = self.embed[torch.tensor(ids)].float()
        if self.project_in is not None:
            x = self.project_in(x.contiguous())
        x = x + self.positions[start + POSITION_OFFSET: start + POSITION_OFFSET + len(ids)].float()
        for i, layer in enumerate(self.layers):
            residual = x
            h = self._norm(x, layer.norm1) if self.pre_norm else x
            x = residual + self._attention(layer, i, h.contiguous(), start, cache)
            if not self.pre_norm:
                x = self._norm(x, layer.norm1)
            residual = x
            h = self._norm(x, layer.norm2) if self.pre_norm else x
            h = torch.relu_(layer.fc1(h.contiguous()))
            x = residual + layer.fc2(h)
            if not self.pre_norm:
                x = self._norm(x, layer.norm2)
        last = x[-1:]
        if self.final_norm is not None:
            last = self._norm(last, self.final_norm)
        if self.project_out is not None:
            last = self.project_out(last.contiguous())
        return self.lm_head(last.contiguous())  # [1, vocab]

    # -- the loop's interface

    def sequence(self, prompt_tokens: int, max_new_tokens: int) -> EngineSequence:
        """A new sequence with its own cache, room for the prompt and the new tokens."""
        return EngineSequence(self, min(self.max_positions, prompt_tokens + max_new_tokens))


class EngineSequence:
    """One generation on an engine: its own key/value cache and position. `prefill(ids)` then `step(token)`,
    each returning the next-token logits [1, vocab]."""

    def __init__(self, engine: CpuEngine, room: int):
        self.engine, self.length = engine, 0
        self.cache = torch.empty((len(engine.layers), 2, engine.heads, room, engine.head_dim), dtype=engine.dtype)

    def _forward(self, ids: list[int]) -> torch.Tensor:
        if self.engine.dropped:
            raise ModelUnloadedError.midway()
        logits = self.engine.forward(ids, self.length, self.cache)
        self.length += len(ids)
        return logits

    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Run the prompt; return the logits after it."""
        if self.length:
            raise RuntimeError("This sequence already has its prompt; start a new one with engine.sequence(...).")
        return self._forward(ids)

    def step(self, token: int) -> torch.Tensor:
        """Append one token; return the logits after it."""
        return self._forward([token])


_threads = threading.local()  # torch's thread count is per thread (OpenMP's setting), so is this count


@contextlib.contextmanager
def one_torch_thread():
    """torch's OpenMP workers and OpenBLAS's threads spin on the same cores and slow each other down
    several-fold; while the engine runs, torch's small ops use one thread and BLAS gets the cores.
    Uses are counted per thread: the first saves the setting, the last restores it, so streams
    interleaved in one thread (entered and left in any order) leave it as they found it."""
    users = getattr(_threads, "users", 0)
    if users == 0:
        _threads.before = torch.get_num_threads()
        torch.set_num_threads(1)
    _threads.users = users + 1
    try:
        yield
    finally:
        _threads.users -= 1
        if _threads.users == 0:
            torch.set_num_threads(_threads.before)
