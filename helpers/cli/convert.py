"""`python -m helpers convert-metaseq`."""

from __future__ import annotations

import argparse
import sys

from ..memory.dtype_names import FLOAT_DTYPES
from .common import print_json, quiet_libraries

# ---------------------------------------------------------------------------------------------- convert-metaseq

def add_convert_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-metaseq",
        help="convert an original metaseq OPT checkpoint to a Hugging Face folder",
        description="Convert an original metaseq OPT checkpoint (restored.pt / reshard.pt, FSDP-flattened or "
                    "model-parallel parts) to a Hugging Face folder that load_model and transformers load. "
                    "No metaseq, Megatron-LM or GPU needed.",
    )
    p.add_argument("src", metavar="SRC", help="a checkpoint file, or a folder holding one or its parts")
    p.add_argument("dst", metavar="DST", help="the folder to write (created; see --overwrite)")
    p.add_argument("--size", metavar="NAME", help="the OPT size it comes from (opt-125m ... opt-66b), when it has no cfg")
    p.add_argument("--num-heads", type=int, metavar="N", help="the attention head count, when it has no cfg and no --size")
    p.add_argument("--dtype", choices=FLOAT_DTYPES, help="convert the weights (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it holds an earlier conversion (and nothing else)")
    p.add_argument("--json", action="store_true", help="print the conversion report as JSON")
    p.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    quiet_libraries()
    from ..metaseq import convert

    report = convert(args.src, args.dst, size=args.size, num_heads=args.num_heads, dtype=args.dtype,
                     overwrite=args.overwrite, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print_json(report.as_dict())
        return 0
    arch = report.architecture  # the notes were printed as they came (progress)
    print(f"Converted {report.layout} checkpoint ({arch['layers']} layers, d_model {arch['d_model']}, "
          f"{arch['heads']} heads, {report.parameters / 1e6:.1f}M parameters, {report.dtype}) to {report.destination}")
    from ..opt.sizes import VOCAB_SIZE

    if arch["vocab_size"] == VOCAB_SIZE:
        print(f"Generate with: python -m helpers generate --model {report.destination} \"Hello\"")
    else:  # OPT's tokenizer would give ids the model may not have: it needs the dictionary it was trained with
        print(f"Load it with transformers: OPTForCausalLM.from_pretrained({report.destination!r}), and turn text into "
              "ids with the dictionary the model was trained with.")
    return 0
