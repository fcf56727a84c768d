"""The API key: from a parameter or an environment variable, and kept out of every text we show."""

from __future__ import annotations

import os

DEFAULT_KEY_ENV = "OPT_API_KEY"  # also the variable `serve --api-key-env` reads by default
NO_KEY = "EMPTY"  # what the client sends to a server started without --api-key (vLLM ignores it)


def resolve_key(api_key: str | None, api_key_env: str | None = DEFAULT_KEY_ENV) -> tuple[str | None, str]:
    """(the key or None, where it came from, said without the key): the parameter, the environment variable,
    or Colab's secret of that name."""
    if api_key:
        return api_key, "the api_key parameter"
    if api_key_env and os.environ.get(api_key_env):
        return os.environ[api_key_env], f"the environment variable {api_key_env}"
    secret = _colab_secret(api_key_env) if api_key_env else None
    if secret:
        return secret, f"Colab's secret {api_key_env}"
    return None, f"no key (neither api_key nor the environment variable {api_key_env or DEFAULT_KEY_ENV} is set)"


def redacted(text: str, key: str | None) -> str:
    """`text` with every occurrence of the key replaced: for messages built from a server's or library's words."""
    if not key or key == NO_KEY:
        return text
    return text.replace(key, "[api key]")


def _colab_secret(name: str) -> str | None:
    """A secret from Colab's key icon (granted to this notebook), where this runs on Colab."""
    try:
        from google.colab import userdata  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return userdata.get(name)
    except Exception:  # Colab's own types: no such secret, or not granted to this notebook
        return None
