"""The command line: `python -m helpers generate|convert-metaseq|plan|bench ...`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import HelpersError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Flags that cannot go together; reported like argparse's own errors."""


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _stdout_takes_unicode() -> bool:
    """Whether standard output's encoding can write any text (PYTHONIOENCODING=ascii, a latin-1 terminal cannot)."""
    try:
        "é€😀".encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _print_json(data: dict) -> None:
    json.dump(data, sys.stdout, ensure_ascii=not _stdout_takes_unicode(), indent=2)  # \u escapes are still exact JSON
    sys.stdout.write("\n")


# ---------------------------------------------------------------------------------------------- generate

def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate a continuation of a prompt",
        description="Generate a continuation of PROMPT with an OPT model, streaming it to the terminal.",
    )
    p.add_argument("prompt", metavar="PROMPT", help="the text to continue ('-' reads it from standard input)")
    p.add_argument("--model", required=True, metavar="NAME_OR_PATH",
                   help="a size (opt-125m ... opt-66b), a hub id (facebook/opt-350m) or a local model folder")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="new tokens at most (default 64)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token (the 2022 tutorial's decoding)")
    p.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (default 0.7)")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling: keep the smallest set of tokens with this much probability (default 0.9)")
    p.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens (0: off); with --penalty-alpha, the candidates compared")
    p.add_argument("--typical-p", type=float, metavar="P", help="typical sampling mass (1: off)")
    p.add_argument("--repetition-penalty", type=float, metavar="R", help="above 1 discourages repeating tokens (1: off)")
    p.add_argument("--no-repeat-ngram-size", type=int, metavar="N", help="never repeat an n-gram of this size (0: off)")
    p.add_argument("--num-beams", type=int, metavar="B", help="beam search with B beams")
    p.add_argument("--penalty-alpha", type=float, metavar="A", help="contrastive search's degeneration penalty (with --top-k)")
    p.add_argument("--min-new-tokens", type=int, metavar="N", help="forbid the end of text before N new tokens")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop before this text (repeatable)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed for sampling (printed when not given)")
    p.add_argument("--device", default="auto", metavar="D", help="auto (default), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="auto: float16 on a GPU, float32 on the CPU")
    p.add_argument("--plan", metavar="P", help="memory plan: auto (the default with --device/--dtype auto), fp16, "
                                               "int8, nf4, fp16-cpu-offload, ... (see `python -m helpers plan`)")
    p.add_argument("--gpu-memory", metavar="SIZE", help="plan against this much GPU memory, e.g. 15GiB")
    p.add_argument("--cpu-memory", metavar="SIZE", help="plan against this much RAM, e.g. 12GiB")
    p.add_argument("--logprobs", type=int, default=0, metavar="K",
                   help="with --json: each token's log-probability and its K most likely alternatives")
    p.add_argument("--truncate", action="store_true", help="drop the start of a prompt longer than the context")
    p.add_argument("--method", default="auto", choices=["auto", "cached", "hf", "tutorial", "seed"],
                   help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.set_defaults(run=_run_generate)


def _settings_from_args(args: argparse.Namespace):
    from .settings import GenerationSettings

    sampling_flags = {"--temperature": args.temperature, "--top-p": args.top_p, "--typical-p": args.typical_p}
    if not args.penalty_alpha:
        sampling_flags["--top-k"] = args.top_k
    if args.greedy:
        given = [flag for flag, value in sampling_flags.items() if value is not None]
        if given:
            raise UsageError(f"--greedy picks the most likely token, so it cannot be combined with {', '.join(given)}.")
    changes = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "typical_p": args.typical_p,
        "repetition_penalty": args.repetition_penalty,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "num_beams": args.num_beams,
        "penalty_alpha": args.penalty_alpha,
        "min_new_tokens": args.min_new_tokens,
        "seed": args.seed,
        "stop": tuple(args.stop),
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.greedy or args.penalty_alpha or ((args.num_beams or 1) > 1 and args.temperature is None):
        changes["do_sample"] = False
    return GenerationSettings().replace(**changes)


def _read_prompt(prompt: str) -> str:
    if prompt != "-":
        return prompt
    if sys.stdin is None or sys.stdin.closed:
        raise UsageError("PROMPT is '-' but there is no standard input to read it from.")
    return sys.stdin.read()


def _memory_flags(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """--gpu-memory and --cpu-memory in bytes, checked before anything loads."""
    from .planner import parse_bytes

    try:
        return tuple(parse_bytes(v) if v else None for v in (args.gpu_memory, args.cpu_memory))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _check_outputs(*outputs: tuple[str | None, str, bool]) -> None:
    """(path, flag, is a figure) for each file the command will write: checked before the work starts."""
    from .outputs import check_output_file

    for path, flag, figure in outputs:
        if path:
            try:
                check_output_file(path, flag, figure)
            except ValueError as exc:
                raise UsageError(str(exc)) from None


def _run_generate(args: argparse.Namespace) -> int:
    from .settings import check_top_logprobs

    settings = _settings_from_args(args)
    if args.logprobs and not args.json:
        raise UsageError("--logprobs lists numbers per token: use it with --json.")
    check_top_logprobs(args.logprobs, "--logprobs")
    _memory_flags(args)
    prompt = _read_prompt(args.prompt)
    _quiet_libraries()
    from .generation import generate, stream
    from .loading import load_model, resolve_device, resolve_source

    resolve_device(args.device)  # a wrong device or path is known now, not after the weights load
    resolve_source(args.model)

    print(f"Loading {args.model} ...", file=sys.stderr, flush=True)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, plan=args.plan,
                        gpu_memory=args.gpu_memory, cpu_memory=args.cpu_memory)
    model, tokenizer, info = loaded
    print(info.summary(), file=sys.stderr, flush=True)
    common = dict(truncate=args.truncate, method=args.method)
    if args.json:
        result = generate(model, tokenizer, prompt, settings, logprobs=args.logprobs > 0,
                          top_logprobs=args.logprobs, **common)
        _print_json({**result.as_dict(), "model": args.model, "source": info.source, "device": info.device,
                     "dtype": info.dtype})
        return 0
    text_stream = stream(model, tokenizer, prompt, settings, **common)
    unicode_ok = _stdout_takes_unicode()
    if not unicode_ok and hasattr(sys.stdout, "reconfigure"):  # write what it cannot show as \u escapes
        sys.stdout.reconfigure(errors="backslashreplace")
    sys.stdout.write(prompt)
    sys.stdout.flush()
    for piece in text_stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    result = text_stream.result
    if not unicode_ok and not (prompt + result.text).isascii():
        print(f"note: standard output's encoding ({sys.stdout.encoding}) cannot show some of this text, so those "
              "characters were written as backslash escapes (\\xe9, \\u200e). Set PYTHONIOENCODING=utf-8, or use --json.", file=sys.stderr)
    seed = f", seed {result.settings.seed}" if result.settings.mode in ("sample", "beam-sample") else ""
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"[{result.timings.new_tokens} tokens in {result.timings.total_seconds:.2f} s, "
        f"{result.timings.tokens_per_second:.1f} tokens/s, first token after "
        f"{result.timings.time_to_first_token or 0:.2f} s, {result.settings.mode}{seed}, "
        f"finished: {result.finish_reason}]",
        file=sys.stderr,
    )
    return 0


# ---------------------------------------------------------------------------------------------- convert-metaseq

def _add_convert(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="convert the weights (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it holds an earlier conversion (and nothing else)")
    p.add_argument("--json", action="store_true", help="print the conversion report as JSON")
    p.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    _quiet_libraries()
    from .metaseq import convert

    report = convert(args.src, args.dst, size=args.size, num_heads=args.num_heads, dtype=args.dtype,
                     overwrite=args.overwrite, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        _print_json(report.as_dict())
        return 0
    arch = report.architecture  # the notes were printed as they came (progress)
    print(f"Converted {report.layout} checkpoint ({arch['layers']} layers, d_model {arch['d_model']}, "
          f"{arch['heads']} heads, {report.parameters / 1e6:.1f}M parameters, {report.dtype}) to {report.destination}")
    from .models import VOCAB_SIZE

    if arch["vocab_size"] == VOCAB_SIZE:
        print(f"Generate with: python -m helpers generate --model {report.destination} \"Hello\"")
    else:  # OPT's tokenizer would give ids the model may not have: it needs the dictionary it was trained with
        print(f"Load it with transformers: OPTForCausalLM.from_pretrained({report.destination!r}), and turn text into "
              "ids with the dictionary the model was trained with.")
    return 0


# ---------------------------------------------------------------------------------------------- plan

def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="list the ways to fit a model in memory, best first",
        description="List every way to load an OPT model on a memory budget (fp16/bf16, 8-bit, 4-bit, CPU or disk "
                    "offload, several GPUs) with its predicted peak GPU and CPU memory and expected speed, best "
                    "first. Budgets default to this machine's.",
    )
    p.add_argument("--model", required=True, metavar="NAME_OR_PATH", help="a size (opt-13b) or a model folder")
    p.add_argument("--gpu-memory", metavar="SIZE", help="memory per GPU, e.g. 15GiB (default: this machine's)")
    p.add_argument("--gpus", type=int, metavar="N", help="number of GPUs (default: this machine's, or 1 with --gpu-memory)")
    p.add_argument("--cpu-memory", metavar="SIZE", help="RAM, e.g. 12GiB (default: what is available here)")
    p.add_argument("--context", type=int, default=2048, metavar="TOKENS", help="tokens per sequence to plan for")
    p.add_argument("--batch", type=int, default=1, metavar="B", help="sequences at once")
    p.add_argument("--json", action="store_true", help="print the ranked options as JSON")
    p.add_argument("--check", action="store_true",
                   help="load the best (or --method) option with random weights under the budget, generate "
                        "--new-tokens tokens, and compare the predicted peak memory with the measured one")
    p.add_argument("--method", default="auto", metavar="M", help="with --check: the option to check")
    p.add_argument("--new-tokens", type=int, default=256, metavar="N", help="with --check: tokens to generate")
    p.add_argument("--out", metavar="FILE", help="with --check: write the result as JSON to FILE")
    p.set_defaults(run=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    from .models import human_bytes
    from .planner import Budget, plan

    gpu, cpu = _memory_flags(args)
    gpus = args.gpus if args.gpus is not None else (1 if gpu and not _gpu_count() else None)
    try:
        budget = Budget.of_machine(gpu_bytes=gpu, gpus=gpus, cpu_bytes=cpu)
    except ValueError as exc:
        raise UsageError(f"--gpus: {exc}") from None
    if args.check:
        _check_outputs((args.out, "--out", False))
        _quiet_libraries()
        from .benchmark import check_plan

        result = check_plan(args.model, args.method, gpu_memory=args.gpu_memory, cpu_memory=args.cpu_memory,
                            new_tokens=args.new_tokens, progress=lambda line: print(line, file=sys.stderr, flush=True))
        print(f"{result['model']} with plan {result['method']}: predicted {human_bytes(result['predicted_bytes'])}, "
              f"measured {human_bytes(result['measured_bytes'])} ({result['measured_on']}), error "
              f"{result['relative_error']:+.1%}; {result['new_tokens']} tokens at {result['tokens_per_second']:.1f} tok/s")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    from .loading import size_of

    size = size_of(args.model)
    try:
        options = plan(size, budget, context=args.context, batch=args.batch)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    usable = [o for o in options if o.usable]
    if args.json:
        _print_json({"model": size.name, "budget": {"gpu_bytes": budget.gpu_bytes, "gpus": budget.gpus,
                                                    "cpu_bytes": budget.cpu_bytes},
                     "context": args.context, "batch": args.batch, "options": [o.as_dict() for o in options]})
    else:
        from .tables import text_table

        print(f"{size.name} on {budget.describe()}, context {args.context}, batch {args.batch}:")
        print(text_table([o.row() for o in options]))
        if usable:
            best = usable[0]
            print(f"\nBest: {best.method} ({best.description}). In Python: load_model({args.model!r}, plan={best.method!r})")
            for o in options:
                if o.fits and not o.available:
                    print(f"({o.method} would fit but {o.unavailable_reason}.)")
    if not usable:
        from .planner import choose

        try:
            choose(options, model=size.name, budget=budget)
        except HelpersError as exc:
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# ---------------------------------------------------------------------------------------------- bench

def _add_bench(sub: argparse._SubParsersAction) -> None:
    from .benchmark import METHODS

    p = sub.add_parser(
        "bench",
        help="measure decoding speed, memory and roofline fraction of each method",
        description="Time each decoding method on one model (random weights in a real OPT shape, or a folder) "
                    "in one run: time to first token, decode tokens/s, peak memory, and the fraction of the "
                    "memory-bandwidth roofline (the bandwidth is measured in the same run). Quantized methods "
                    "also report their quality cost against the unquantized model.",
    )
    p.add_argument("--model", default="opt-125m", metavar="SIZE_OR_PATH",
                   help="an OPT size (random weights in its shape; default opt-125m) or a local model folder")
    p.add_argument("--device", default="auto", metavar="D", help="auto (default), cpu, cuda")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="auto: float16 on a GPU, float32 on the CPU")
    p.add_argument("--batch", default="1", metavar="B[,B...]", help="batch size(s), e.g. 1,2,4,8 for a sweep")
    p.add_argument("--prompt-tokens", type=int, default=10, metavar="N")
    p.add_argument("--new-tokens", type=int, default=128, metavar="N")
    p.add_argument("--methods", metavar="M1,M2",
                   help=f"comma-separated, from: {', '.join(METHODS)} (default: all that run on the device)")
    p.add_argument("--repeats", type=int, default=3, metavar="R", help="timed runs per method (the median is kept)")
    p.add_argument("--json", metavar="FILE", help="write the results with hardware and version facts to FILE")
    p.add_argument("--plot", metavar="FILE.png", help="draw the results to FILE.png")
    p.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from .benchmark import METHODS

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    unknown = [m for m in methods or [] if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        raise UsageError(f"--batch takes whole numbers separated by commas, not {args.batch!r}") from None
    for flag, value in (("--batch", min(batches)), ("--prompt-tokens", args.prompt_tokens),
                        ("--new-tokens", args.new_tokens), ("--repeats", args.repeats)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1")
    _check_outputs((args.json, "--json", False), (args.plot, "--plot", True))
    _quiet_libraries()
    from .benchmark import run_suite
    from .tables import text_table

    report = run_suite(args.model, methods, device=args.device, dtype=args.dtype, batches=batches,
                       prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, repeats=args.repeats,
                       progress=lambda line: print(line, file=sys.stderr, flush=True))
    bw = report.bandwidth
    print(f"{report.model}: {report.parameters / 1e6:.1f}M parameters, {report.dtype} on {report.device}; "
          f"measured bandwidth {bw['bytes_per_second'] / 1e9:.1f} GB/s ({bw['used']})")
    print(text_table(report.table()))
    if args.json:
        report.write(args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        from .plots import benchmark_figure

        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        benchmark_figure(report.as_dict()).savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- leaks

def _add_leaks(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leaks",
        help="load, generate and unload a model many times and record the memory left behind",
        description="Load, generate (to the end, and streamed then stopped; every third cycle with a fault "
                    "injected mid-stream) and unload a model CYCLES times; record resident memory, CUDA memory "
                    "still allocated and live threads after each unload.",
    )
    p.add_argument("--model", required=True, metavar="SIZE_OR_PATH", help="a model folder, or a size (random weights)")
    p.add_argument("--cycles", type=int, default=20, metavar="N")
    p.add_argument("--device", default="auto", metavar="D")
    p.add_argument("--out", metavar="FILE", help="write the figures as JSON to FILE")
    p.set_defaults(run=_run_leaks)


def _run_leaks(args: argparse.Namespace) -> int:
    if args.cycles < 2:
        raise UsageError("--cycles must be at least 2 (growth is measured from the first cycle on)")
    _check_outputs((args.out, "--out", False))
    _quiet_libraries()
    from .benchmark import leak_check
    from .models import human_bytes

    result = leak_check(args.model, args.cycles, device=args.device,
                        progress=lambda line: print(line, file=sys.stderr, flush=True))
    cuda = result["cuda_allocated_bytes_after_each"][-1]
    print(f"{args.cycles} cycles of {result['model']}: resident memory grew {human_bytes(result['resident_growth_bytes'])} "
          f"in all ({human_bytes(result['resident_growth_after_first_bytes'])} after the first cycle); CUDA memory "
          f"left allocated {human_bytes(cuda)}; threads alive {result['threads_after_each'][0]} -> "
          f"{result['threads_after_each'][-1]}; {result['faults_injected']} injected faults surfaced")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------- main

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_generate, _add_convert, _add_plan, _add_bench,
                                                                    _add_leaks]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers",
        description="Generate text with Meta's OPT models, convert original metaseq checkpoints, plan memory, benchmark.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if sys.stderr is None:  # started with its error output closed: messages go nowhere, but nothing fails
        sys.stderr = open(os.devnull, "w")
    if sys.stdout is None:
        print("error: standard output is closed, so the results would be lost. Run the command with its output "
              "going to a terminal, a file (> out.txt) or a pipe.", file=sys.stderr)
        return EXIT_ERROR
    from .signals import interrupt_after

    try:
        with interrupt_after():  # imports torch: the first seconds, when a Ctrl-C is likeliest
            parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    from .errors import HelpersError
    from .signals import EXIT_TERMINATED, Terminated, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C, so temporary folders are removed
            return args.run(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HelpersError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Terminated:
        print("\nterminated (SIGTERM); temporary files removed", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as exc:  # the user gets one line, not a traceback from deep inside a library
        if os.environ.get("HELPERS_DEBUG"):
            raise
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            print("error: the GPU ran out of memory. Try a smaller model, --dtype float16, fewer "
                  "--max-new-tokens, or see `python -m helpers plan` for what fits.", file=sys.stderr)
        else:
            print(f"error: {type(exc).__name__}: {exc}\n(set HELPERS_DEBUG=1 to see the traceback)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
