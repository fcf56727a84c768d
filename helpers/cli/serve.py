"""`python -m helpers serve`: plan vLLM's layout for an OPT model, print the command with why, and run it."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from .common import EXIT_ERROR, UsageError, print_json


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve an OPT model with vLLM (tensor and pipeline parallel), for load_model(URL)",
        description="Plan how vLLM serves an OPT model on this machine's GPUs (or N GPUs per node on M nodes): "
                    "the tensor-parallel and pipeline-parallel sizes and each GPU's memory for its weights and "
                    "key/value cache; print the exact vLLM command with why each flag, then run it where vLLM is "
                    "installed (without a GPU: vLLM's CPU build, make install-vllm). Clients connect with "
                    "load_model('http://HOST:PORT/v1') or --model http://HOST:PORT/v1.",
    )
    p.add_argument("model", metavar="MODEL", help="a size (opt-66b, opt-175b), a hub id, or a folder (a hub snapshot "
                                                  "or one written by convert-metaseq)")
    p.add_argument("--gpus", type=int, metavar="N", help="GPUs per node (default: this machine's; 0: the CPU build)")
    p.add_argument("--nodes", type=int, default=1, metavar="M", help="nodes, one pipeline stage each (default 1)")
    p.add_argument("--gpu-memory", metavar="SIZE", help="memory per GPU, e.g. 80GiB (default: this machine's)")
    p.add_argument("--context", type=int, default=2048, metavar="C", help="positions per sequence (default 2048)")
    p.add_argument("--concurrency", type=int, default=16, metavar="K", help="sequences at once to plan for (16)")
    p.add_argument("--host", default="127.0.0.1", metavar="H", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, metavar="P", help="port (default 8000)")
    p.add_argument("--api-key-env", default="OPT_API_KEY", metavar="VAR",
                   help="the environment variable holding the API key clients must send (default OPT_API_KEY)")
    p.add_argument("--force", action="store_true", help="listen beyond this machine without an API key")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the command; start nothing")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from ..environment import detect
    from ..memory.bytes import parse_bytes
    from ..serving.command import ServePlanError, ServeRequest, serve_plan
    from ..serving.launch import run_server, vllm_python

    for flag, value, least in (("--gpus", args.gpus, 0), ("--nodes", args.nodes, 1), ("--context", args.context, 2),
                               ("--concurrency", args.concurrency, 1), ("--port", args.port, 1)):
        if value is not None and value < least:
            raise UsageError(f"{flag} must be at least {least}, not {value}.")
    try:
        gpu_memory = parse_bytes(args.gpu_memory) if args.gpu_memory else None
    except ValueError as exc:
        raise UsageError(f"--gpu-memory: {exc}") from None
    env = detect()
    python = vllm_python()
    request = ServeRequest(args.model, args.gpus, args.nodes, gpu_memory, args.context, args.concurrency, args.host,
                           args.port, args.api_key_env, bool(os.environ.get(args.api_key_env)), args.force,
                           python or "python")
    try:
        plan = serve_plan(request, len(env.gpus), env.gpus[0].total_bytes if env.gpus else 0)
    except ServePlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print_json(plan.as_dict())
    else:
        _print_plan(plan)
    if args.dry_run:
        return 0
    if python is None:
        print("error: vLLM is not installed here. On a GPU machine: pip install vllm; without a GPU: make "
              "install-vllm (vLLM's CPU build in .venv-vllm), or set OPT_VLLM_PYTHON. Then run the command above.",
              file=sys.stderr)
        return EXIT_ERROR
    print(f"Starting vLLM; clients connect to {plan.url} (Ctrl-C stops it) ...", file=sys.stderr, flush=True)
    return run_server(plan.command, plan.environment)


def _print_plan(plan) -> None:
    shape = plan.layout
    if shape is not None:
        from ..units import human_bytes

        print(f"{plan.size} on {shape.pipeline_parallel_size} node(s) x {shape.tensor_parallel_size} GPU(s): each GPU "
              f"holds {human_bytes(shape.weight_bytes_per_gpu)} of weights and "
              f"{human_bytes(shape.kv_cache_bytes_per_gpu)} of cache for {shape.concurrency} x {shape.context} "
              f"tokens ({human_bytes(shape.gpu_bytes_per_gpu)} with vLLM's overhead; room for "
              f"{shape.max_concurrency} such sequences).")
    for note in plan.notes:
        print(f"note: {note}")
    print("\n" + " ".join(f"{k}={v}" for k, v in plan.environment.items()) + (" " if plan.environment else "")
          + shlex.join(plan.command) + "\n")
    for flag, why in plan.why:
        print(f"  {flag:<40} {why}")
