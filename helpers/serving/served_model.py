"""A served model's handle (`ServedModel`, `is_served`), light: no client library is imported for a local model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import ServerConnection


@dataclass(frozen=True)
class ServedConfig:
    """What generation needs to know of a served model's shape: the positions its server allows."""

    max_position_embeddings: int


class ServedModel:
    """A model an OpenAI-compatible server runs: `generate`/`stream` send it requests (method 'served')."""

    def __init__(self, connection: ServerConnection, name: str, context: int):
        self.connection, self.name = connection, name
        self.config = ServedConfig(context)

    @property
    def url(self) -> str:
        """The server's address as shown in messages and history (no credentials)."""
        return self.connection.shown

    def __repr__(self) -> str:
        return f"ServedModel({self.name!r} at {self.url})"


def is_served(model: object) -> bool:
    return isinstance(model, ServedModel)
