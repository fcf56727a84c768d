"""A generation request's checks before the first step: settings, prompts fitted, room for new tokens, memory."""

from __future__ import annotations

from transformers import OPTForCausalLM, PreTrainedTokenizerBase

from ..environment import free_memory_bytes
from ..errors import MemoryBudgetError, PromptError, SettingsError
from ..memory.bytes import generation_bytes
from ..opt.model_state import model_device
from ..opt.sizes import BOS_TOKEN_ID, size_from_config
from ..opt.tokenizer import Prompt, encode_prompt
from ..serving.served_model import is_served
from ..units import human_bytes
from .settings import GenerationSettings


def settings_with(settings: GenerationSettings | None, changes: dict) -> GenerationSettings:
    settings = settings or GenerationSettings()
    if not isinstance(settings, GenerationSettings):
        raise SettingsError(f"settings must be a GenerationSettings, got {type(settings).__name__}.")
    return settings.replace(**changes) if changes else settings


def fit_context(ids: list[int], limit: int, truncate: bool, reserve: int = 1) -> tuple[list[int], str | None]:
    """Keep a prompt inside the model's positions, leaving room for at least one new token; a prompt that is
    cut (truncate) keeps its end and leaves room for `reserve` new tokens (at most all but two positions)."""
    room = limit - 1
    if len(ids) <= room:
        return ids, None
    if not truncate:
        raise PromptError(
            f"The prompt is {len(ids)} tokens long, but OPT sees at most {limit} positions, and at least one "
            f"is needed for the answer. Shorten the prompt to {room} tokens or fewer, or pass truncate=True "
            "(--truncate) to keep its last part."
        )
    room = limit - max(1, min(reserve, limit - 2))
    kept = [BOS_TOKEN_ID] + ids[len(ids) - room + 1:]
    return kept, f"The prompt was {len(ids)} tokens; its first {len(ids) - len(kept)} tokens were dropped to fit {limit} positions."


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt], limit: int,
                   truncate: bool, reserve: int = 1) -> tuple[list[list[int]], list[str]]:
    """Each prompt's token ids, fitted to `limit` positions (a cut one leaving room for `reserve` new tokens);
    and a note for each prompt that was cut."""
    if not prompts:
        raise PromptError("No prompt was given: pass a string or a non-empty list of strings.")
    fitted = [fit_context(encode_prompt(tokenizer, prompt), limit, truncate, reserve) for prompt in prompts]
    return [ids for ids, _ in fitted], [note for _, note in fitted if note]


def room_for_new_tokens(settings: GenerationSettings, prompt_ids: list[list[int]],
                        limit: int) -> tuple[int, str | None]:
    """How many new tokens fit after the longest prompt (at most the settings' number); a note if fewer."""
    room = min(settings.max_new_tokens, limit - max(len(ids) for ids in prompt_ids))
    if room == settings.max_new_tokens:
        return room, None
    return room, (f"Only {room} new tokens fit after this prompt in OPT's {limit} positions "
                  f"(asked for {settings.max_new_tokens}); generation stops there.")


def check_working_memory(model: OPTForCausalLM, settings: GenerationSettings, prompt_ids: list[list[int]],
                         max_new_tokens: int) -> None:
    """Refuse, before the first step, a generation whose cache and working memory (the planner's
    arithmetic) exceed the memory free on the model's device: an error, not the kernel's OOM kill."""
    if is_served(model):  # its server holds the cache, and says when it is full
        return
    mode, prompts = settings.mode, len(prompt_ids)
    per_prompt = settings.num_beams if mode.startswith("beam") else 1
    if mode == "contrastive":
        per_prompt = settings.top_k  # every candidate runs through the model at each step
    need = generation_bytes(size_from_config(model.config), max(len(ids) for ids in prompt_ids), max_new_tokens,
                            prompts * per_prompt, model.dtype)
    device = model_device(model)
    free = free_memory_bytes(device)
    if free is not None and need > free:
        rows = f"{prompts} prompt(s) x {per_prompt} {'beams' if mode.startswith('beam') else 'candidates'}" \
            if per_prompt > 1 else f"{prompts} prompt(s)"
        raise MemoryBudgetError(
            f"This generation would need about {human_bytes(need)} for its key/value cache and working memory "
            f"({rows}, {max_new_tokens} new tokens), more than the {human_bytes(free)} free on {device}. Use "
            "fewer beams, fewer prompts at once or fewer new tokens.")
