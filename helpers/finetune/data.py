"""Text to fine-tune on, as OPT's token ids packed into blocks and split into training and held-out blocks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from ..errors import PromptError, TrainingDataError
from ..opt.sizes import MAX_POSITIONS
from ..opt.tokenizer import encode_prompt
from .texts import read_documents

SAMPLE_TEXT = Path(__file__).parents[1] / "data" / "finetune" / "as_you_like_it.txt"


@dataclass(frozen=True)
class TrainingData:
    """Packed blocks of OPT's token ids: `train` to learn from, `held_out` (at least one block) to measure on."""

    train: torch.Tensor  # int64 [n_train_blocks, seq_len]
    held_out: torch.Tensor  # int64 [n_held_out_blocks, seq_len]
    seq_len: int
    tokens: int  # tokens in all blocks
    documents: int  # texts read
    source: str  # what was read, for people

    def describe(self) -> str:
        blocks = len(self.train) + len(self.held_out)
        return (f"{self.source}: {self.tokens:,} tokens in {blocks:,} blocks of {self.seq_len} "
                f"({len(self.train):,} to train on, {len(self.held_out):,} held out)")


def prepare_data(source: str | os.PathLike | Sequence[str], tokenizer: PreTrainedTokenizerBase, *,
                 seq_len: int = 512, held_out_fraction: float = 0.1, seed: int = 0,
                 text_column: str | None = None) -> TrainingData:
    """Read `source` (a .txt/.md or .jsonl file, a folder of them, a hub data set id or a list of strings),
    tokenize each document with OPT's start-token rule, pack the tokens into `seq_len` blocks (the remainder
    dropped) and hold out `held_out_fraction` of the blocks (at least one), chosen with `seed`.

    Raises:
        TrainingDataError: what was wrong with the data or the settings, and what to do.
    """
    _check_settings(seq_len, held_out_fraction)
    documents = read_documents(source, text_column)
    ids = token_stream(documents.texts, tokenizer, documents.source)
    blocks = pack(ids, seq_len, documents.source)
    train, held_out = split_blocks(blocks, held_out_fraction, seed)
    return TrainingData(train=train, held_out=held_out, seq_len=seq_len, tokens=blocks.numel(),
                        documents=len(documents.texts), source=documents.source)


def _check_settings(seq_len: int, held_out_fraction: float) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 2 <= seq_len <= MAX_POSITIONS:
        raise TrainingDataError(f"The sequence length (seq_len) must be a whole number from 2 to {MAX_POSITIONS} "
                                f"(OPT's context); it is {seq_len!r}. 512 suits most text.")
    if not isinstance(held_out_fraction, (int, float)) or not 0 < held_out_fraction < 1:
        raise TrainingDataError(f"held_out_fraction must be between 0 and 1 (0.1 holds out a tenth of the "
                                f"blocks); it is {held_out_fraction!r}.")


def token_stream(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, source: str = "the text") -> torch.Tensor:
    """All documents' token ids one after another, each document starting with OPT's `</s>` once (as OPT saw
    documents in pre-training: the token that separates them)."""
    ids: list[int] = []
    for number, text in enumerate(texts, start=1):
        try:
            ids += encode_prompt(tokenizer, text)
        except PromptError as exc:
            raise TrainingDataError(f"Document {number} of {source}: {exc}") from None
    return torch.tensor(ids, dtype=torch.long)


def pack(ids: torch.Tensor, seq_len: int, source: str = "the text") -> torch.Tensor:
    """`ids` cut into blocks of `seq_len` tokens, [n_blocks, seq_len]; the tokens left over are dropped (as
    transformers' language-modelling examples do). Two blocks at least: one to train on, one held out."""
    n_blocks = len(ids) // seq_len
    if n_blocks < 2:
        short = "shorter than one block" if n_blocks == 0 else "only one block"
        fits = len(ids) // 2
        more = f"more text (at least {2 * seq_len:,} tokens for seq_len={seq_len})"
        what_to_do = f"Use seq_len={fits} or less, or add {more}." if fits >= 2 else f"Add {more}."
        raise TrainingDataError(
            f"{source} is {len(ids):,} tokens long: {short} of {seq_len} tokens, and fine-tuning needs two at "
            f"least (one to train on, one held out to measure). {what_to_do}")
    return ids[: n_blocks * seq_len].view(n_blocks, seq_len)


def split_blocks(blocks: torch.Tensor, held_out_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training blocks, held-out blocks): `held_out_fraction` of them held out, at least one each, drawn with
    `seed` (the same seed, the same split); each part keeps the blocks' order in the text."""
    n_blocks = len(blocks)
    n_held = min(max(1, round(n_blocks * held_out_fraction)), n_blocks - 1)
    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed))
    held = order[:n_held].sort().values
    train = order[n_held:].sort().values
    return blocks[train], blocks[held]
