"""A generation request's checks: a prompt fitted to the context, the settings with the call's changes."""

from __future__ import annotations

from ..errors import PromptError, SettingsError
from ..opt.sizes import BOS_TOKEN_ID
from .settings import GenerationSettings


def fit_context(ids: list[int], limit: int, truncate: bool) -> tuple[list[int], str | None]:
    """Keep a prompt inside the model's positions, leaving room for at least one new token."""
    room = limit - 1
    if len(ids) <= room:
        return ids, None
    if not truncate:
        raise PromptError(
            f"The prompt is {len(ids)} tokens long, but OPT sees at most {limit} positions, and at least one "
            f"is needed for the answer. Shorten the prompt to {room} tokens or fewer, or pass truncate=True "
            "(--truncate) to keep its last part."
        )
    kept = [BOS_TOKEN_ID] + ids[len(ids) - room + 1:]
    return kept, f"The prompt was {len(ids)} tokens; its first {len(ids) - len(kept)} tokens were dropped to fit {limit} positions."


def settings_with(settings: GenerationSettings | None, changes: dict) -> GenerationSettings:
    settings = settings or GenerationSettings()
    if not isinstance(settings, GenerationSettings):
        raise SettingsError(f"settings must be a GenerationSettings, got {type(settings).__name__}.")
    return settings.replace(**changes) if changes else settings
