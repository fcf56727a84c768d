"""The connection to one OpenAI-compatible server (the `openai` client), and its failures as clear messages."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai

from ..errors import ServerError
from .keys import NO_KEY, redacted
from .urls import base_url, shown_url

DEFAULT_TIMEOUT = 60.0  # seconds a server may stay silent (to connect, or between two pieces of an answer)
DEFAULT_RETRIES = 2  # the client's retries of a request that never started (connection refused, timeout, 5xx)


class ServerConnection:
    """One server: its address, the key sent only to it, and the `openai` client that speaks its protocol."""

    def __init__(self, url: str, api_key: str | None, key_source: str, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES):
        self.url, self.shown = base_url(url), shown_url(url)
        self.key_source, self.timeout, self.retries = key_source, timeout, retries
        self._key = api_key
        self._raw: httpx.Client | None = None
        self._client = openai.OpenAI(base_url=self.url, api_key=api_key or NO_KEY, max_retries=retries,
                                     timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))

    def __repr__(self) -> str:
        return f"ServerConnection({self.shown})"

    def models(self) -> list[dict]:
        """The models the server serves, as its `/v1/models` lists them (vLLM adds `max_model_len`)."""
        try:
            listed = self._client.models.list()
        except openai.NotFoundError:
            raise self.not_openai("GET /models answered 404") from None
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            raise self.failure(exc) from None
        except (ValueError, TypeError, AttributeError):  # a web page, or JSON of another shape
            raise self.not_openai("its answer to GET /models is not a list of models") from None
        models = [item.model_dump() for item in getattr(listed, "data", None) or []]
        if not models or not all(isinstance(m.get("id"), str) for m in models):
            raise self.not_openai("GET /models listed no models")
        return models

    def tokenize(self, model: str, text: str) -> list[int] | None:
        """The server's own token ids for `text` (vLLM's `/tokenize`); None where the server has no such endpoint."""
        root = self.url.removesuffix("/v1")
        try:
            answer = httpx.post(f"{root}/tokenize", json={"model": model, "prompt": text}, timeout=self.timeout,
                                headers={"Authorization": f"Bearer {self._key or NO_KEY}"})
            tokens = answer.json().get("tokens") if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return tokens if isinstance(tokens, list) else None

    def stream_completion(self, **request) -> openai.Stream:
        """A streamed `/v1/completions` answer (closing it ends the server's generation)."""
        try:
            return self._client.completions.create(stream=True, **request)
        except (openai.OpenAIError, httpx.HTTPError, json.JSONDecodeError) as exc:
            raise self.failure(exc, request.get("model")) from None

    def raw_stream(self, body: dict) -> Iterator[dict]:
        """POST `body` to `/completions` with plain httpx and yield each streamed chunk's JSON: no `openai` client,
        no retries (the baseline `bench --model URL` measures this client's own overhead against)."""
        if self._raw is None:  # one pooled client for all (a client a request would measure its TLS set-up)
            self._raw = httpx.Client(timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                                     headers={"Authorization": f"Bearer {self._key or NO_KEY}"})
        try:
            with self._raw.stream("POST", f"{self.url}/completions", json={**body, "stream": True}) as answer:
                if answer.status_code != 200:
                    answer.read()
                    raise ServerError(f"The server at {self.shown} answered {answer.status_code}: "
                                      f"{redacted(answer.text[:300], self._key)}")
                for line in answer.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        yield json.loads(line[len("data: "):])
        except httpx.HTTPError as exc:
            raise self.failure(exc) from None

    def not_openai(self, what: str) -> ServerError:
        return ServerError(f"{self.shown} does not answer like an OpenAI-compatible server ({what}). Give the "
                           "address of vLLM's OpenAI server, ending in /v1 (e.g. http://127.0.0.1:8000/v1).")

    def failure(self, exc: BaseException, model: str | None = None) -> ServerError:
        """The one clear message for what went wrong talking to this server (the key never in it)."""
        return ServerError(redacted(self._message(exc, model), self._key))

    def _message(self, exc: BaseException, model: str | None) -> str:
        at = f"The server at {self.shown}"
        tries = f" (tried {self.retries + 1} times)" if self.retries else ""
        if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException)):
            return (f"{at} did not answer within {self.timeout:g} s{tries}. It may be overloaded or stuck: check "
                    "it, or connect with a longer timeout.")
        if isinstance(exc, openai.APIConnectionError):
            return (f"Nothing answers at {self.shown}{tries}. Start the server (python -m helpers serve MODEL) "
                    "or check the address and the port.")
        if isinstance(exc, httpx.TransportError):
            return (f"The connection to {self.shown} broke off mid-answer ({type(exc).__name__}: {exc}); the server "
                    "may have stopped. The text received so far is kept.")
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return (f"{at} refused the API key from {self.key_source}: it is wrong or missing. Set the server's "
                    "key in that environment variable (or pass api_key=...).")
        if isinstance(exc, openai.NotFoundError):
            return (f"{at} does not serve the model '{model}' ({_said(exc)}). Connect again to see what it "
                    "serves, or name one of its models.")
        if isinstance(exc, (openai.BadRequestError, openai.UnprocessableEntityError)):
            return f"{at} rejected a parameter of the request: {_said(exc)}"
        if isinstance(exc, openai.APIStatusError):
            return f"{at} failed with HTTP {exc.status_code}: {_said(exc)}"
        if isinstance(exc, (json.JSONDecodeError, openai.APIResponseValidationError)):
            return (f"{at} sent data that is not an OpenAI-compatible answer ({type(exc).__name__}: {exc}). "
                    "Check that the address is vLLM's OpenAI server.")
        return f"{at} failed: {_said(exc)}"


def _said(exc: BaseException) -> str:
    """What the server said: the `message` of its JSON error where there is one, else the error's text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else None
        if isinstance(message, str):
            return message
    return str(getattr(exc, "message", None) or exc)


def chunks(connection: ServerConnection, request: dict):
    """The pieces of one streamed answer; failures as ServerErrors; closing the generator closes the answer
    (the server then stops that generation)."""
    answer = connection.stream_completion(**request)
    try:
        yield from answer
    except (openai.OpenAIError, httpx.HTTPError, json.JSONDecodeError) as exc:
        raise connection.failure(exc, request.get("model")) from None
    finally:
        answer.close()
