"""OPT's tokenizer: the shipped BPE files, BOS (`</s>`, id 2) exactly once, prompts to token ids."""

from __future__ import annotations

from pathlib import Path

from transformers import (
    AutoTokenizer,
    GPT2Tokenizer,
    PreTrainedTokenizerBase,
)

from ..errors import (
    ModelLoadError,
    PromptError,
)
from .sizes import BOS_TOKEN_ID, MAX_POSITIONS

# The longest token in OPT's vocabulary covers 128 bytes (a run of mojibake), so a text of more than
# 128 x N characters is always more than N tokens: how much of a prompt can matter is known before tokenizing it.
LONGEST_TOKEN_BYTES = 128
PROMPT_MAX_CHARS = MAX_POSITIONS * LONGEST_TOKEN_BYTES  # 262,144 characters: more never fits OPT's context

Prompt = str | list[int]  # text, or token ids (to continue exactly from a point, as branches do)


def is_token_ids(prompt) -> bool:
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    """Token ids of a prompt, starting with OPT's BOS (`</s>`, id 2) exactly once, also when the
    tokenizer adds none (the 2022 tutorial's bart-large tokenizer) or the text itself starts with '</s>'.
    A list of token ids is taken as it is (BOS added if missing)."""
    if is_token_ids(prompt):
        vocab = len(tokenizer)
        bad = [t for t in prompt if not 0 <= t < max(vocab, 50272)]
        if bad:
            raise PromptError(f"Token ids must be between 0 and {vocab - 1}; got {bad[:3]}.")
        ids = list(prompt)
    elif isinstance(prompt, str):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PromptError(
                f"The prompt contains text that is not valid Unicode ({prompt[exc.start:exc.end]!r} at character "
                f"{exc.start}: a lone surrogate, often left by a broken copy and paste). Remove or retype it."
            ) from None
        ids = list(tokenizer(prompt, verbose=False).input_ids)
    else:
        raise PromptError(f"A prompt must be text (str) or a list of token ids, got {type(prompt).__name__}.")
    if ids[:1] != [BOS_TOKEN_ID]:
        ids = [BOS_TOKEN_ID] + ids
    while ids[1:2] == [BOS_TOKEN_ID]:
        ids.pop(1)
    return ids


TOKENIZER_DIR = Path(__file__).parents[1] / "data" / "opt-tokenizer"


def opt_tokenizer(path: str | Path = TOKENIZER_DIR) -> GPT2Tokenizer:
    """OPT's tokenizer from a folder holding vocab.json and merges.txt (default: the copy shipped with
    `helpers`), set up as OPT expects: `</s>` (id 2) prepended once, `<pad>` (id 1), left padding."""
    tokenizer = GPT2Tokenizer.from_pretrained(
        str(path), bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        add_bos_token=True, model_max_length=MAX_POSITIONS,
    )
    return ensure_bos(tokenizer)


def ensure_bos(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Make `tokenizer(text)` start with OPT's BOS exactly once, pad on the left, and know the context.
    The seed used bart-large's tokenizer, which adds no BOS; hub OPT tokenizers add it themselves."""
    if tokenizer.bos_token_id != BOS_TOKEN_ID:
        raise ModelLoadError(
            f"This tokenizer's BOS token is {tokenizer.bos_token!r} (id {tokenizer.bos_token_id}), not OPT's "
            f"'</s>' (id {BOS_TOKEN_ID}): it is not an OPT tokenizer. Use the model's own tokenizer or "
            "helpers.opt.tokenizer.opt_tokenizer()."
        )
    ids = tokenizer("a").input_ids
    if ids[:1] != [BOS_TOKEN_ID]:
        tokenizer.add_bos_token = True
        ids = tokenizer("a").input_ids
    if ids[:1] != [BOS_TOKEN_ID] or ids[1:2] == [BOS_TOKEN_ID]:
        raise ModelLoadError(f"Could not make this tokenizer prepend '</s>' exactly once (it gives {ids}).")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = "<pad>"
    tokenizer.padding_side = "left"
    if tokenizer.model_max_length > MAX_POSITIONS:
        tokenizer.model_max_length = MAX_POSITIONS
    return tokenizer


def load_tokenizer(source: str, local: bool) -> PreTrainedTokenizerBase:
    """The model's own tokenizer, or OPT's shipped one for a local folder that has none."""
    folder = Path(source)
    if local and not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        return opt_tokenizer()
    return ensure_bos(AutoTokenizer.from_pretrained(source, local_files_only=local))
