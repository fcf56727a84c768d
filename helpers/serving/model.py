"""A served model as a model: `connect(url)` checks the server and returns (ServedModel, tokenizer, facts)."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..errors import ServerError
from ..opt.sizes import BOS_TOKEN_ID, MAX_POSITIONS
from ..opt.tokenizer import opt_tokenizer
from .client import DEFAULT_RETRIES, DEFAULT_TIMEOUT, ServerConnection
from .keys import DEFAULT_KEY_ENV, resolve_key
from .served_model import ServedConfig, ServedModel, is_served

__all__ = ["ServedConfig", "ServedModel", "ServedInfo", "connect", "is_served"]

PROBE = "Hello world, the OPT models"  # text whose token ids tell OPT's tokenizer from others


@dataclass
class ServedInfo:
    """Facts about a served model, as `load_model` gives them for a local one."""

    name: str  # what was asked for (the URL, credentials left out)
    source: str  # the server's address
    model: str  # the name the server serves it under
    context: int
    device: str
    load_seconds: float
    dtype: str = "as served"
    adapter: None = None  # a served model takes no adapter here: the server applies its own (vLLM's --lora-modules)

    def summary(self) -> str:
        return (f"{self.model} served at {self.source}: context {self.context} positions, "
                f"connected in {self.load_seconds:.1f} s")



def connect(url: str, *, api_key: str | None = None, api_key_env: str | None = DEFAULT_KEY_ENV,
            model: str | None = None, tokenizer: PreTrainedTokenizerBase | None = None,
            timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
            ) -> tuple[ServedModel, PreTrainedTokenizerBase, ServedInfo]:
    """Connect to an OpenAI-compatible server (vLLM's) and check what it serves.

    Args:
        url: the API root, `http://host:port/v1` (`/v1` is added to a bare `http://host:port`).
        api_key: the server's key; default: the environment variable `api_key_env`. Sent only to this server.
        model: the served model's name; default: the server's only one.
        tokenizer: the tokenizer prompts are counted and tokens decoded with (default: OPT's).
        timeout: seconds the server may stay silent (connecting, or between two pieces of an answer).
        retries: how often a request that never started is tried again.

    Returns:
        (ServedModel, tokenizer, ServedInfo), as `load_model` returns (model, tokenizer, info).

    Raises:
        ServerError: nothing answers, the key is refused, the address is not an OpenAI-compatible server, or
            the model named is not among those it serves.
    """
    key, key_source = resolve_key(api_key, api_key_env)
    connection = ServerConnection(url, key, key_source, timeout, retries)
    start = time.perf_counter()
    listed = connection.models()
    chosen = _chosen(listed, model, connection.shown)
    context = chosen.get("max_model_len")
    if not isinstance(context, int) or context < 2:
        context = MAX_POSITIONS  # a server that does not say (not vLLM): OPT's own context
    tokenizer = tokenizer or opt_tokenizer()
    served = ServedModel(connection, chosen["id"], context)
    _warn_if_not_opt(served, tokenizer)
    info = ServedInfo(connection.shown, connection.shown, chosen["id"], context, f"served at {connection.shown}",
                      time.perf_counter() - start)
    return served, tokenizer, info


def _chosen(listed: list[dict], model: str | None, shown: str) -> dict:
    names = [m["id"] for m in listed]
    if model is None and len(listed) == 1:
        return listed[0]
    if model is None:
        raise ServerError(f"The server at {shown} serves {len(listed)} models ({', '.join(names)}): name one "
                          "(connect(url, model=...)).")
    for entry in listed:
        if model in (entry["id"], entry.get("root")):
            return entry
    raise ServerError(f"The server at {shown} does not serve '{model}'; it serves: {', '.join(names)}.")


def _warn_if_not_opt(served: ServedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Warn where the server's tokenizer is not OPT's: token counts, stops and log-probabilities may differ."""
    theirs = served.connection.tokenize(served.name, PROBE)
    ours = [t for t in tokenizer(PROBE).input_ids if t != BOS_TOKEN_ID]
    if theirs is None:
        if "opt" not in served.name.lower():
            warnings.warn(f"Cannot tell whether '{served.name}' at {served.url} is an OPT model (the server has no "
                          "/tokenize): if it is not, token counts and log-probabilities may differ.", stacklevel=3)
    elif [t for t in theirs if t != BOS_TOKEN_ID] != ours:
        warnings.warn(f"'{served.name}' at {served.url} does not use OPT's tokenizer: it is not an OPT model, so "
                      "token counts, stop strings and log-probabilities read with OPT's tokenizer may differ.",
                      stacklevel=3)
