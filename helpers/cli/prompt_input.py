"""generate's PROMPT: from the command line or standard input, decoded, never more than a context holds."""

from __future__ import annotations

import codecs
import os
import sys
from collections import deque

from .common import UsageError

CHUNK_BYTES = 1 << 20
_BOMS = {codecs.BOM_UTF16_LE: "utf-16", codecs.BOM_UTF16_BE: "utf-16", codecs.BOM_UTF32_LE: "utf-32"}


def check_encoding(encoding: str) -> str:
    """The codec's canonical name; a name Python does not know is a usage error."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise UsageError(f"--encoding: '{encoding}' is not an encoding Python knows; use one such as utf-8, "
                         "latin-1, cp1252 or utf-16.") from None


def read_prompt(prompt: str, encoding: str = "utf-8", truncate: bool = False) -> tuple[str, str | None]:
    """(the prompt text, a note when only its end was kept). PROMPT '-' reads standard input in chunks,
    keeping at most what OPT's context can hold (PROMPT_MAX_CHARS characters), so memory stays bounded
    whatever the input's size; more than that is refused unless `truncate` asks for the end.

    Raises:
        UsageError: no standard input, bytes that are not text in `encoding`, or too long without --truncate.
    """
    from ..opt.tokenizer import PROMPT_MAX_CHARS

    encoding = check_encoding(encoding)
    if prompt != "-":
        if encoding != "utf-8" or any("\udc80" <= c <= "\udcff" for c in prompt):  # bytes the locale could not decode
            try:
                raw = os.fsencode(prompt)
            except UnicodeEncodeError:  # other lone surrogates: not from bytes; the tokenizer's check names them
                raw = None
            prompt = prompt if raw is None else _decoded(raw, encoding, "The PROMPT argument")
        chunks, total = [prompt], len(prompt)
    else:
        if sys.stdin is None or sys.stdin.closed:
            raise UsageError("PROMPT is '-' but there is no standard input to read it from.")
        chunks, total = _read_stdin(encoding, PROMPT_MAX_CHARS, truncate)
    text = "".join(chunks)
    if total <= PROMPT_MAX_CHARS:
        return text, None
    where = "Standard input" if prompt == "-" else "The prompt"
    if not truncate:
        raise UsageError(
            f"{where} holds more than {PROMPT_MAX_CHARS:,} characters, more than OPT's context can ever hold (2048 "
            "tokens of at most 128 bytes each). Pass --truncate to keep its end, or shorten it.")
    return text[-PROMPT_MAX_CHARS:], (
        f"{where} held {total:,} characters; only its last {PROMPT_MAX_CHARS:,} were read into the prompt "
        "(--truncate keeps the end).")


def _read_stdin(encoding: str, keep: int, truncate: bool) -> tuple[deque[str], int]:
    """The last `keep` characters of standard input (as chunks) and how many characters it held in all;
    without `truncate`, reading stops as soon as there are more than `keep`."""
    binary = getattr(sys.stdin, "buffer", None)
    pieces = iter(lambda: binary.read(CHUNK_BYTES), b"") if binary is not None else None
    if pieces is None:  # a text stream without bytes underneath (an embedding program's replacement)
        chunks, total = deque(), 0
        for text in iter(lambda: sys.stdin.read(CHUNK_BYTES), ""):
            total = _kept(chunks, total, text, keep)
            if total > keep and not truncate:
                break
        return chunks, total
    decoder = codecs.getincrementaldecoder("utf-8-sig" if encoding == "utf-8" else encoding)()
    chunks, total, offset = deque(), 0, 0
    for data in pieces:
        text = _decode_step(decoder, data, offset, encoding)
        offset += len(data)
        total = _kept(chunks, total, text, keep)
        if total > keep and not truncate:
            return chunks, total
    return chunks, _kept(chunks, total, _decode_step(decoder, b"", offset, encoding, final=True), keep)


def _kept(chunks: deque[str], total: int, text: str, keep: int) -> int:
    """Add `text`, drop whole chunks that lie before the last `keep` characters; the new total read."""
    if text:
        chunks.append(text)
    held = sum(map(len, chunks))
    while chunks and held - len(chunks[0]) >= keep:
        held -= len(chunks.popleft())
    return total + len(text)


def _decode_step(decoder: codecs.IncrementalDecoder, data: bytes, offset: int, encoding: str, final: bool = False) -> str:
    try:
        return decoder.decode(data, final)
    except UnicodeDecodeError as exc:
        raise UsageError(_not_text("Standard input", data, offset, exc, encoding)) from None


def _decoded(data: bytes, encoding: str, what: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UsageError(_not_text(what, data, 0, exc, encoding)) from None


def _not_text(what: str, data: bytes, offset: int, exc: UnicodeDecodeError, encoding: str) -> str:
    """One line: where the input stops being `encoding`, what it probably is, and the two ways out."""
    bad = data[exc.start:exc.end][:4].hex(" ")
    guess = next((name for bom, name in _BOMS.items() if offset == 0 and data.startswith(bom)), None)
    likely = (f"It starts with a {guess.upper()} byte order mark, so pass --encoding {guess}" if guess else
              "If it is Latin-1 or Windows text, pass --encoding latin-1 or --encoding cp1252")
    return (f"{what} is not {encoding.upper().replace('UTF-8', 'UTF-8 text')}: byte(s) {bad} at byte {offset + exc.start:,} "
            f"({exc.reason}). {likely} (any encoding Python knows works), or convert it first: "
            f"iconv -f {(guess or 'latin1').upper()} -t UTF-8 FILE | python -m helpers generate - ...")
