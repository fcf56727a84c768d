"""The documents to fine-tune on, read from a text file, a .jsonl file, a folder, a hub data set or a list."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import TrainingDataError
from ..loading.fetch import hub_offline

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIX = ".jsonl"
READ_SUFFIXES = (*TEXT_SUFFIXES, JSONL_SUFFIX)
WHAT_IS_READ = "plain text files (.txt, .md, UTF-8) and .jsonl files (one JSON object with a text field per line)"


@dataclass(frozen=True)
class Documents:
    """The texts read from one source, and what was read, for people."""

    texts: list[str]
    source: str


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def read_documents(source: str | os.PathLike | Sequence[str], text_column: str | None = None) -> Documents:
    """Every document in `source`: a .txt/.md file is one, a .jsonl file one per line, a folder all of its
    files', a hub data set one per row, a list of strings one per item. Raises TrainingDataError."""
    given_a_path = isinstance(source, os.PathLike)
    if given_a_path:
        source = os.fspath(source)
    if isinstance(source, str):
        path = Path(source).expanduser()
        if path.is_dir():
            return _read_folder(path, text_column)
        if path.exists():
            texts = _read_file(path, text_column)
            return Documents(texts, f"{path.name} ({_plural(len(texts), 'document')})")
        if given_a_path or _looks_like_a_path(source):
            raise TrainingDataError(f"There is no file or folder at {source!r} (looked in {path.resolve()}). "
                                    "Check the path; on Colab, upload the file or mount Drive first.")
        return _read_hub(source, text_column)
    if isinstance(source, Sequence) and all(isinstance(text, str) for text in source):
        texts = [text for text in source if text.strip()]
        if not texts:
            raise TrainingDataError("The list of texts is empty (or holds only blank strings): give at least one "
                                    "text to fine-tune on.")
        return Documents(texts, f"{_plural(len(texts), 'text')} given")
    raise TrainingDataError(f"Fine-tuning data is a path, a hub data set id or a list of strings, not "
                            f"{type(source).__name__}.")


def _looks_like_a_path(source: str) -> bool:
    """A missing path rather than a hub id ("user/name"): a file suffix, a leading '/', '.' or '~', or deeper."""
    return (source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1
            or Path(source).suffix.lower() in (*READ_SUFFIXES, ".json", ".csv", ".pdf", ".docx"))


def _read_folder(folder: Path, text_column: str | None) -> Documents:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in READ_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        others = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        found = (f"it holds {_plural(len(others), 'other file')} ({', '.join(others[:3])}"
                 f"{', ...' if len(others) > 3 else ''})" if others else "it is empty")
        raise TrainingDataError(f"No text files in the folder {str(folder)!r}: {found}. Fine-tuning reads "
                                f"{WHAT_IS_READ}; export or copy your text into such files.")
    texts = []
    for path in files:
        texts += _read_file(path, text_column, empty_ok=True)
    if not texts:
        raise TrainingDataError(f"Every text file in the folder {str(folder)!r} is empty "
                                f"({_plural(len(files), 'file')}). Put the text to fine-tune on in them.")
    return Documents(texts, f"{folder.name}/ ({_plural(len(files), 'file')}, {_plural(len(texts), 'document')})")


def _read_file(path: Path, text_column: str | None, *, empty_ok: bool = False) -> list[str]:
    text = _decode(path)
    texts = _jsonl_texts(path, text, text_column) if path.suffix.lower() == JSONL_SUFFIX else [text]
    texts = [t for t in texts if t.strip()]
    if not texts and not empty_ok:
        raise TrainingDataError(f"{path.name} is empty (no text in it): put the text to fine-tune on in it, or "
                                "pick another file.")
    return texts


def _decode(path: Path) -> str:
    """The file's text as UTF-8 (a byte-order mark dropped); a binary or otherwise encoded file is refused."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrainingDataError(f"Could not read {path}: {exc.strerror or exc}. Check that it is a readable "
                                "file.") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise TrainingDataError(f"{path.name} is not a text file (it holds a NUL byte, at byte offset "
                                f"{nul:,}: a binary file such as a PDF, a Word document or an "
                                f"image). Fine-tuning reads {WHAT_IS_READ}: save or export it as plain text.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TrainingDataError(f"{path.name} is not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset "
                                f"{exc.start:,} cannot be read. Re-save it as UTF-8 (in an editor: Save as, "
                                f"encoding UTF-8; or `iconv -f latin1 -t utf-8 {path.name} > fixed.txt`).") from None


def _jsonl_texts(path: Path, text: str, text_column: str | None) -> list[str]:
    field = text_column or "text"
    texts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingDataError(f"{where} is not JSON ({exc.msg}, column {exc.colno}): each line of a .jsonl "
                                    f'file is one JSON object, like {{"{field}": "your text"}}. Fix or remove '
                                    "that line.") from None
        if not isinstance(record, dict) or field not in record:
            has = f"its fields are {', '.join(map(str, record))}" if isinstance(record, dict) else \
                f"it is a JSON {type(record).__name__}, not an object"
            raise TrainingDataError(f'{where} has no "{field}" field ({has}). Give each line a "{field}" field, '
                                    "or name the field that holds the text with text_column=...")
        if not isinstance(record[field], str):
            raise TrainingDataError(f'{where}: "{field}" is a {type(record[field]).__name__}, not text. Make it '
                                    "a string, or name the field that holds the text with text_column=...")
        texts.append(record[field])
    return texts


def _read_hub(name: str, text_column: str | None) -> Documents:
    import datasets

    offline = hub_offline() or os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    try:
        loaded = datasets.load_dataset(name)
    except ConnectionError:
        why = ("the hub is switched off here (HF_HUB_OFFLINE is set)" if offline
               else "the Hugging Face Hub could not be reached")
        raise TrainingDataError(
            f"Could not get the data set {name!r}: {why}, and it is not in the local cache. There is no file or "
            f"folder named {name!r} here either. Use a file or folder of your own text, or load the data set once "
            "with a connection (`datasets.load_dataset(...)` caches it) and run this again.") from None
    except FileNotFoundError:
        raise TrainingDataError(
            f"There is no file or folder named {name!r}, nor a data set of that name on the Hugging Face Hub (or "
            "it is private: log in with `hf auth login`). Check the path or the data set id.") from None
    split = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
    column = _text_column(name, split, text_column)
    texts = [text for text in split[column] if isinstance(text, str) and text.strip()]
    if not texts:
        raise TrainingDataError(f"The column {column!r} of the data set {name!r} holds no text.")
    return Documents(texts, f"hub: {name} [{column}] ({_plural(len(texts), 'document')})")


def _text_column(name: str, split, text_column: str | None) -> str:
    """`text_column`, or the data set's first column of strings."""
    columns = dict(split.features)
    strings = [c for c, feature in columns.items() if getattr(feature, "dtype", "") in ("string", "large_string")]
    if text_column is not None and text_column in columns:
        if text_column not in strings:
            raise TrainingDataError(f"The column {text_column!r} of the data set {name!r} is not text "
                                    f"({columns[text_column]}). Its text columns: {', '.join(strings) or 'none'}.")
        return text_column
    if text_column is not None or not strings:
        what = f"has no column {text_column!r}" if text_column is not None else "has no text column"
        raise TrainingDataError(f"The data set {name!r} {what}; its columns are "
                                f"{', '.join(f'{c} ({f})' for c, f in columns.items())}. Name the one that holds "
                                "the text with text_column=... (TEXT_COLUMN in notebook 09).")
    return strings[0]
