"""`convert`: an original metaseq checkpoint to a Hugging Face folder, stage by stage; and `compare_models`."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..generation.run import generate
from ..generation.settings import GenerationSettings
from ..memory.dtypes import resolve_dtype
from ..opt.model_state import model_device
from ..opt.sizes import get_size
from ..opt.tokenizer import encode_prompt
from ..signals import sigterm_as_interrupt
from .architecture import resolve_architecture
from .destination import check_destination, claim, mark_as_output, publish
from .merge import common_dtype, merged_tensors, part_states
from .parts import find_parts, is_sharded, read_part
from .report import ConversionReport
from .sharded_convert import convert_sharded
from .write import ShardWriter, check_against_model, hf_config, save_companions


# Written by hand because no library reads these formats any more: metaseq's own tools need the
# metaseq/Megatron/fairscale stack (which no longer installs) and several GPUs; this runs on a CPU.
def convert(
    src: str | Path | list,
    dst: str | Path,
    *,
    size: str | None = None,
    num_heads: int | None = None,
    dtype: str | torch.dtype | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = 2 * 1024**3,
    progress: Callable[[str], None] = lambda line: None,
    verify: bool = True,
) -> ConversionReport:
    """Convert an original metaseq OPT checkpoint to a Hugging Face folder that `load_model` and plain
    transformers load (config, safetensors, OPT's tokenizer).

    Args:
        src: a checkpoint file, or a folder holding one (restored.pt, reshard.pt) or its parts
            (reshard-model_part-K.pt), or an FSDP-sharded checkpoint: the folder (or the list of files) of
            `*-model_part-K-shardD.pt` / `*-shardD.pt` (OPT-175B's 992 files). Those are converted one FSDP
            instance (one layer) at a time with memory to match, an output file per instance, and a
            conversion that was interrupted resumes where it stopped (see `sharded_convert`).
        dst: the folder to create, outside the source. It is written beside, under a temporary name, and
            renamed at the end, so a failure, Ctrl-C or SIGTERM leaves no half-written model; what a killed
            run left is removed by the next one (and said so in the notes).
        size: the OPT size it comes from (opt-350m, ...), for the head count and flattened layouts when
            the checkpoint has no cfg.
        num_heads: the head count, when the checkpoint has no cfg and `size` is not given.
        dtype: convert the weights (default: keep the checkpoint's, fp16 for the releases).
        overwrite: replace `dst` if it holds an earlier conversion's output (and nothing else).
        verify: check the files of a release whose md5 sums Meta publishes (OPT-175B) against them first.

    Raises:
        CheckpointError (or UnsafeCheckpointError): anything unreadable, inconsistent or unsafe, and any
            destination that would put files of the user's at risk.
    """
    with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: the partial output is removed
        return _convert(src, Path(dst).expanduser(), size, num_heads, dtype, overwrite, max_shard_bytes,
                        progress, verify)


def _convert(src, dst: Path, size, num_heads, dtype, overwrite, max_shard_bytes, progress, verify) -> ConversionReport:
    if size is not None:
        get_size(size)
    if num_heads is not None and num_heads < 1:
        raise CheckpointError(f"--num-heads must be a positive number (got {num_heads}).")
    paths = find_parts(src)
    src = Path(src[0]).expanduser().parent if isinstance(src, (list, tuple)) else Path(src).expanduser()
    check_destination(dst, src, paths, overwrite)
    notes: list[str] = []

    def say(note: str) -> None:  # a note for the report, shown as it comes
        notes.append(note)
        progress(f"note: {note}")

    if is_sharded(paths):
        return convert_sharded(paths, dst, size=size, num_heads=num_heads, dtype=dtype, overwrite=overwrite,
                               verify=verify, progress=progress, say=say, notes=notes)

    tmp = claim(dst, say)
    try:
        parts = []
        for i, path in enumerate(paths):
            progress(f"reading {path} ({i + 1}/{len(paths)})")
            parts.append(read_part(path))
        if len({p.flattened for p in parts}) > 1:
            raise CheckpointError("Some parts are FSDP-flattened and others are not: they are not one checkpoint.")
        arch, split = resolve_architecture(parts, size, num_heads, say)
        if not parts[0].has_version and arch.pre_layer_norm:
            say("The checkpoint has no decoder.version (written before mid-2022). metaseq then silently drops the "
                "final layer norm, which ruins the output; it is kept here.")
        torch_dtype = None
        if dtype is not None:
            torch_dtype = resolve_dtype(dtype, "cpu")
        torch_dtype = common_dtype(parts, torch_dtype, say)
        states = part_states(parts, arch, split)
        writer = ShardWriter(tmp, max_shard_bytes)
        for name, tensor in merged_tensors(states, arch, torch_dtype):
            writer.add(name, tensor)
            if name.endswith("final_layer_norm.bias") and ".layers." in name:
                progress(f"layer {int(name.split('.')[3]) + 1}/{arch.layers} converted")
        files = writer.finish()
        config = hf_config(arch, torch_dtype)
        count = check_against_model(tmp, files, arch, config)
        save_companions(tmp, config)
        layout = ("FSDP-flattened" if parts[0].flattened else "unflattened") + (
            f", {split}-way model parallel" if split > 1 else ", single file")
        report = ConversionReport(
            source=[str(p) for p in paths], destination=str(dst), layout=layout, model_parallel=split,
            architecture=asdict(arch), parameters=count, dtype=str(torch_dtype).removeprefix("torch."),
            files=files, notes=notes,
        )
        mark_as_output(tmp, report.as_dict())
        publish(tmp, dst, overwrite)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise CheckpointError(f"The disk ran out of space while writing {dst} (the converted model takes about "
                                  "as much as the checkpoint): free some space or choose a folder on another disk. "
                                  "Nothing was left behind.") from None
        raise
    return report


def compare_models(converted, reference, tokenizer, prompts: list[str], new_tokens: int = 20) -> list[dict]:
    """Per prompt: the largest logit difference between two models (run in fp32 on the converted model's
    device) and whether greedy decoding picks the same tokens: how a conversion is checked."""
    settings = GenerationSettings.greedy(max_new_tokens=new_tokens)
    rows = []
    for prompt in prompts:
        ids = encode_prompt(tokenizer, prompt)
        with torch.inference_mode():
            a = converted(torch.tensor([ids], device=model_device(converted))).logits.float().cpu()
            b = reference(torch.tensor([ids], device=model_device(reference))).logits.float().cpu()
        same = (generate(converted, tokenizer, prompt, settings).token_ids
                == generate(reference, tokenizer, prompt, settings).token_ids)
        rows.append({"prompt": prompt, "max logit difference": float((a - b).abs().max()),
                     "same greedy tokens": same})
    return rows
