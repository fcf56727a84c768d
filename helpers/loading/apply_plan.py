"""Applying a memory plan: the planner's choice as from_pretrained arguments; int8 on the CPU."""

from __future__ import annotations

import torch
from transformers import OPTForCausalLM

from ..environment import cpu_supports_bf16
from ..errors import ModelLoadError
from ..generation.backends.cpu_int8 import quantize_weights_int8
from ..generation.backends.matvec_kernel import matvec_kernel
from ..memory.bytes import parse_bytes
from ..memory.dtypes import dtype_name, torch_dtype
from ..memory.planner import NO_CPU_BF16, Budget, Option, check_fits, choose, plain_plan
from ..memory.planner import plan as make_plan
from ..opt.sizes import find_size
from .sources import size_of
from .weight_files import SafetensorsRows


def plan_for(name: str, source: str, local: bool, method: str, gpu_memory, cpu_memory, context: int | None,
              batch: int) -> Option:
    """The planner's choice for this model on this machine (or the given budgets)."""
    size = find_size(name) or size_of(source)
    try:
        budget = Budget.of_machine(gpu_bytes=None if gpu_memory is None else parse_bytes(gpu_memory),
                                   cpu_bytes=None if cpu_memory is None else parse_bytes(cpu_memory))
        options = make_plan(size, budget, context=context, batch=batch)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    chosen = choose(options, method, model=size.name, budget=budget)
    if chosen.plan == "bf16-cpu":
        prepare_cpu_bf16()
    return chosen


def prepare_cpu_bf16() -> None:
    """bf16-cpu's kernel built now, while loading, rather than in the middle of the first reply; on a CPU it
    cannot run on, bf16 runs as asked, with a warning that says what it costs."""
    if not cpu_supports_bf16():
        import warnings

        warnings.warn(f"bf16 on the CPU (plan bf16-cpu): {NO_CPU_BF16}.", UserWarning, stacklevel=4)
        return
    matvec_kernel()


def check_plain_load_fits(name: str, source: str, device: str, dtype: torch.dtype, gpu_memory, cpu_memory,
                           context: int | None, batch: int) -> None:
    method = plain_plan(device, dtype_name(dtype))
    if method is None:
        return
    if method == "bf16-cpu":
        prepare_cpu_bf16()
    size = find_size(name) or size_of(source)
    budget = Budget.of_machine(gpu_bytes=None if gpu_memory is None else parse_bytes(gpu_memory),
                               cpu_bytes=None if cpu_memory is None else parse_bytes(cpu_memory))
    check_fits(size, method, budget, context=context, batch=batch,
               what=f"Loading {size.name} in {dtype_name(dtype)} on {device}")


def quantize_dynamic_int8(model: OPTForCausalLM, inplace: bool = True) -> OPTForCausalLM:
    """torch's dynamic int8 quantization of every Linear, lm_head included (its tie to the token table
    is broken: the table stays fp32 for the lookup): the CPU's 8-bit plan."""
    import warnings

    with warnings.catch_warnings():  # torch marks these APIs deprecated in favour of torchao
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=inplace)


def quantize_for(option: Option, model: OPTForCausalLM, folder: str | None = None) -> OPTForCausalLM:
    """The model as `option` computes with it: quantized on the CPU for int8-cpu and int8-weights-cpu (reading
    its weights again from `folder`'s safetensors files, where it has them, a block of rows at a time)."""
    if option.dtype == "int8-dynamic":
        return quantize_dynamic_int8(model)
    if option.dtype == "int8-weights":
        stored = None if folder is None else SafetensorsRows.of_folder(folder)
        return quantize_weights_int8(model) if stored is None else quantize_weights_int8(model, stored.reader)
    return model


# ------------------------------------------------------------------------------------------ applying


def device_map(option: Option) -> dict[str, int | str]:
    """The option's placement as a device map for `from_pretrained` (GPU indices as integers)."""
    return {name: int(device.split(":")[1]) if device.startswith("cuda") else device
            for name, device in option.placement.items()}


def load_arguments(option: Option, offload_folder: str | None = None) -> dict:
    """Keyword arguments for `OPTForCausalLM.from_pretrained` that apply `option`."""
    # int8-weights-cpu loads in the file's own dtype (lazily, from safetensors): its weights are read again, a
    # block at a time, to quantize them, so an fp16 file is never converted whole to fp32
    kwargs: dict = {"dtype": "auto" if option.dtype == "int8-weights" else torch_dtype(option.dtype)}
    devices = set(option.placement.values())
    if devices != {"cpu"}:
        kwargs["device_map"] = device_map(option)
    if option.dtype in ("int8", "nf4"):
        from transformers import BitsAndBytesConfig

        offload = "cpu" in devices
        if option.dtype == "int8":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True,
                                                               llm_int8_enable_fp32_cpu_offload=offload)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16,
                llm_int8_enable_fp32_cpu_offload=offload)
    if "disk" in devices:
        if offload_folder is None:
            import tempfile

            offload_folder = tempfile.mkdtemp(prefix="opt-offload-")
        kwargs["offload_folder"] = offload_folder
    return kwargs
