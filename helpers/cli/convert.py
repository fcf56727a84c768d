"""`python -m helpers convert-metaseq`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from ..errors import CheckpointError
from ..memory.dtype_names import FLOAT_DTYPES
from .common import print_json, quiet_libraries

# ---------------------------------------------------------------------------------------------- convert-metaseq

def add_convert_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-metaseq",
        help="convert an original metaseq OPT checkpoint to a Hugging Face folder",
        description="Convert an original metaseq OPT checkpoint (restored.pt / reshard.pt, FSDP-flattened or "
                    "model-parallel parts, or the FSDP-sharded files of a training run such as Meta's 992-file "
                    "OPT-175B release) to a Hugging Face folder that load_model and transformers load. "
                    "No metaseq, Megatron-LM or GPU needed. Check a download first with --verify FOLDER.",
    )
    p.add_argument("paths", nargs="+", metavar="SRC",
                   help="a checkpoint file, or a folder holding one, its parts, or the shards of an FSDP-sharded "
                        "checkpoint (*-model_part-K-shardD.pt: OPT-175B's 992 files); then DST, unless --out names it")
    p.add_argument("--out", metavar="DST", help="the folder to write (created; see --overwrite)")
    p.add_argument("--verify", action="store_true",
                   help="only check the files of the SRC folder against the md5 sums Meta publishes for its release "
                        "(OPT-175B, OPT-66B): name what is missing, extra or corrupt, and convert nothing")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the md5 check a conversion of Meta's OPT-175B files runs first")
    p.add_argument("--size", metavar="NAME", help="the OPT size it comes from (opt-125m ... opt-66b), when it has no cfg")
    p.add_argument("--num-heads", type=int, metavar="N", help="the attention head count, when it has no cfg and no --size")
    p.add_argument("--dtype", choices=FLOAT_DTYPES, help="convert the weights (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it holds an earlier conversion (and nothing else)")
    p.add_argument("--json", action="store_true", help="print the conversion report as JSON")
    p.set_defaults(run=_run_convert)


def _sources(args: argparse.Namespace) -> tuple[str | list[str], str]:
    """SRC... --out DST, or the older SRC DST."""
    paths = args.paths
    if args.out is None:
        if len(paths) != 2:
            raise CheckpointError("Name the folder to write: convert-metaseq SRC --out DST (or SRC DST).")
        paths, out = paths[:1], paths[1]
    else:
        out = args.out
    return (paths[0] if len(paths) == 1 else paths), out


def _run_convert(args: argparse.Namespace) -> int:
    quiet_libraries()
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.verify:
        from ..checkpoints.release import verify_release

        if len(args.paths) != 1 or args.out is not None:
            raise CheckpointError("--verify checks one folder: convert-metaseq --verify FOLDER")
        report = verify_release(args.paths[0], progress=progress)
        if args.json:
            print_json(asdict(report))
        else:
            print(report.summary())
        return 0
    from ..metaseq import convert

    src, out = _sources(args)
    report = convert(src, out, size=args.size, num_heads=args.num_heads, dtype=args.dtype,
                     overwrite=args.overwrite, progress=progress, verify=not args.no_verify)
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
