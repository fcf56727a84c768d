"""`python -m helpers generate`."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import TYPE_CHECKING

from ..memory.dtype_names import DTYPE_CHOICES
from .common import UsageError, memory_flags, print_json, quiet_libraries, stdout_takes_unicode
from .prompt_input import read_prompt

if TYPE_CHECKING:  # this module stays torch-free at import: only the run loads the library
    from ..generation.results import GenerationResult
    from ..generation.streaming import TextStream

# ---------------------------------------------------------------------------------------------- generate

def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate a continuation of a prompt",
        description="Generate a continuation of PROMPT with an OPT model, streaming it to the terminal.",
    )
    p.add_argument("prompt", metavar="PROMPT", help="the text to continue ('-' reads it from standard input)")
    p.add_argument("--model", required=True, metavar="NAME_OR_PATH",
                   help="a size (opt-125m ... opt-66b), a hub id (facebook/opt-350m) or a local model folder")
    p.add_argument("--adapter", metavar="DIR", help="a LoRA adapter folder (what `finetune` wrote) to apply to the "
                                                    "model, merged into its weights unless they are quantized")
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
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="auto: float16 on a GPU, float32 on the CPU")
    p.add_argument("--plan", metavar="P", help="memory plan: auto (the default with --device/--dtype auto), fp16, "
                                               "int8, nf4, fp16-cpu-offload, ... (see `python -m helpers plan`)")
    p.add_argument("--gpu-memory", metavar="SIZE", help="plan against this much GPU memory, e.g. 15GiB")
    p.add_argument("--cpu-memory", metavar="SIZE", help="plan against this much RAM, e.g. 12GiB")
    p.add_argument("--logprobs", type=int, default=0, metavar="K",
                   help="with --json: each token's log-probability and its K most likely alternatives")
    p.add_argument("--truncate", action="store_true", help="drop the start of a prompt longer than the context "
                   "(of standard input, only the end that can fit is read into memory)")
    p.add_argument("--encoding", default="utf-8", metavar="E",
                   help="the encoding of standard input's bytes: utf-8 (default; a byte order mark is skipped), "
                        "latin-1, cp1252, utf-16, ... (any Python codec)")
    p.add_argument("--method", default="auto", help=argparse.SUPPRESS)  # checked against the backends' registry
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.set_defaults(run=_run_generate)


def _settings_from_args(args: argparse.Namespace):
    from ..generation.settings import GenerationSettings

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


def _run_generate(args: argparse.Namespace) -> int:
    from ..generation.settings import check_top_logprobs

    settings = _settings_from_args(args)
    if args.logprobs and not args.json:
        raise UsageError("--logprobs lists numbers per token: use it with --json.")
    check_top_logprobs(args.logprobs, "--logprobs")
    memory_flags(args)
    from ..errors import SettingsError
    from ..generation.backends.registry import check_method

    try:  # before the prompt is read (it may be all of standard input)
        check_method(args.method)
    except SettingsError as exc:
        raise UsageError(f"--method: {exc}") from None
    prompt, note = read_prompt(args.prompt, args.encoding, args.truncate)
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)
    if not prompt.strip():  # as the playground: an empty prompt is refused, not run from the start token alone
        raise UsageError("The prompt is empty: give some text for the model to continue.")
    quiet_libraries()
    warnings.filterwarnings("ignore", message="The prompt was ", category=UserWarning)  # printed once as a note
    from ..generation.run import generate
    from ..generation.streaming import stream
    from ..loading.adapters import is_adapter, read_adapter
    from ..loading.devices import resolve_device
    from ..loading.model import load_model
    from ..loading.sources import resolve_source
    from ..serving.urls import is_server_url

    resolve_device(args.device)  # a wrong device or path is known now, not after the weights load
    if args.adapter is not None:  # a folder that is no adapter is known now, not after the weights load
        read_adapter(args.adapter)
    elif is_adapter(args.model):  # an adapter folder as the model: its base loads, with it
        read_adapter(args.model)
    if not is_server_url(args.model) and not is_adapter(args.model):  # a served model is checked by connecting
        resolve_source(args.model)

    print(f"Loading {args.model} ...", file=sys.stderr, flush=True)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, plan=args.plan,
                        gpu_memory=args.gpu_memory, cpu_memory=args.cpu_memory, adapter=args.adapter, merge="auto")
    model, tokenizer, info = loaded
    print(info.summary(), file=sys.stderr, flush=True)
    common = dict(truncate=args.truncate, method=args.method)
    if args.json:
        result = generate(model, tokenizer, prompt, settings, logprobs=args.logprobs > 0,
                          top_logprobs=args.logprobs, **common)
        print_json({**result.as_dict(), "model": args.model, "source": info.source, "device": info.device,
                     "dtype": info.dtype, "adapter": str(info.adapter.path) if info.adapter else None})
        return 0
    from ..signals import interrupt_after

    with interrupt_after(again_raises=True) as ctrl_c:  # a Ctrl-C stops the run at the end of a step
        text_stream = stream(model, tokenizer, prompt, settings, **common,
                             on_step=lambda: text_stream.stop() if ctrl_c.arrived else None)
        result = _stream_to_terminal(text_stream, prompt)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"[{result.summary()}]", file=sys.stderr)
    return 0


def _stream_to_terminal(text_stream: TextStream, prompt: str) -> GenerationResult:
    """The prompt, then the continuation as it comes; characters stdout cannot show as escapes, said so."""
    unicode_ok = stdout_takes_unicode()
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
    return result
