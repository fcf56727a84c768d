"""Server addresses: what counts as one, and how one is shown (never with credentials in it)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def is_server_url(name: str) -> bool:
    """Whether a model name is a server's address (`http://host:port/v1`, `https://...`)."""
    return isinstance(name, str) and name.lower().startswith(("http://", "https://"))


def base_url(url: str) -> str:
    """The API root the client talks to: the URL as given, with `/v1` added where no path was given."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def shown_url(url: str) -> str:
    """The address for messages, history and logs: user, password, query and fragment left out."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") or "/v1", "", ""))
