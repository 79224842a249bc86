"""Load real text corpora (TinyStories dumps, JSON lines, folders of .txt) as lists of documents."""

from __future__ import annotations

import json
import os
import re
import unicodedata
from pathlib import Path

from absl import logging

FORMATS = ("auto", "tinystories", "jsonl", "txt_dir", "paragraphs")

# A separator line is `<|endoftext|>` with only horizontal whitespace around it (so "\r" too).
_EOT_LINE_RE = re.compile(r"^[^\S\n]*<\|endoftext\|>[^\S\n]*$", re.MULTILINE)
# Paragraph documents: a blank line (possibly holding spaces) between non-empty runs.
_BLANK_LINES_RE = re.compile(r"\n[^\S\n]*\n\s*")
# Control characters that are not whitespace: NUL..BS, SO..ESC, DEL and the C1 controls but NEL.
# Loading replaces each by U+FFFD (the replacement character), one for one: label offsets stay
# valid, the pre-tokenizer cuts words exactly where it did (both are neither letter, digit nor
# space), and stray bytes show as a visible mark in samples, the browser and the report instead
# of vanishing or driving a terminal (ESC sequences).
_CONTROL_RE = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")
CONTROL_REPLACEMENT = "\ufffd"
# A file with more NULs than this share of its characters is UTF-16 or binary, not UTF-8 text
# (UTF-16 of Latin-script text is about half NULs; a stray NUL in real text is far below this).
MAX_NUL_FRACTION = 0.25


class CorpusError(ValueError):
    """Bad corpus input; the message names the file and the fix."""


def normalize_text(text: str) -> str:
    """Turn CRLF into LF and put the text in unicode NFC."""
    text = text.replace("\r\n", "\n")
    # is_normalized is a fast scan; skip the copying normalize() for the usual NFC input.
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text


def read_utf8(path: Path) -> str:
    """Read a file as UTF-8 (BOM allowed), naming the first bad byte on failure."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"{path}: cannot read file ({e.strerror}); check permissions") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            raise CorpusError(
                f"{path}: starts with a UTF-16 byte-order mark, not UTF-8 text; re-encode it, "
                "e.g. `iconv -f utf-16 -t utf-8`"
            ) from e
        raise CorpusError(
            f"{path}: not valid UTF-8 (byte 0x{data[e.start]:02x} at byte offset {e.start}); "
            "re-encode the file as UTF-8, e.g. `iconv -f cp1252 -t utf-8`"
        ) from e
    text = text.removeprefix("\ufeff")
    nuls = text.count("\x00")
    if nuls > MAX_NUL_FRACTION * len(text):
        raise CorpusError(
            f"{path}: {nuls} of its {len(text)} characters are NUL bytes, so it is UTF-16 or "
            "binary data, not UTF-8 text; re-encode it, e.g. `iconv -f utf-16 -t utf-8`"
        )
    return text


def replace_controls(docs: list[str]) -> tuple[list[str], int, int]:
    """(docs with each non-whitespace control character made U+FFFD, characters replaced,
    documents touched); other characters and every length stay as they were."""
    out, replaced, touched = [], 0, 0
    for doc in docs:
        if _CONTROL_RE.search(doc) is not None:
            doc, n = _CONTROL_RE.subn(CONTROL_REPLACEMENT, doc)
            replaced, touched = replaced + n, touched + 1
        out.append(doc)
    return out, replaced, touched


def _clean(docs: list[str]) -> list[str]:
    """Strip each document and drop the empty ones."""
    return [d for d in (d.strip() for d in docs) if d]


def has_eot_lines(text: str) -> bool:
    """Whether the text holds at least one `<|endoftext|>` separator line."""
    return "<|endoftext|>" in text and _EOT_LINE_RE.search(text) is not None


def split_tinystories(text: str) -> list[str]:
    """Split normalised text on `<|endoftext|>` lines into stripped, non-empty stories."""
    return _clean(_EOT_LINE_RE.split(text))


def split_paragraphs(text: str) -> list[str]:
    """Split normalised text on blank lines into stripped, non-empty documents."""
    return _clean(_BLANK_LINES_RE.split(text))


def _require_docs(docs: list[str], path: Path, what: str) -> list[str]:
    """Raise a CorpusError when parsing produced no documents."""
    if not docs:
        raise CorpusError(f"{path}: no documents found ({what}); point at a non-empty corpus")
    return docs


def _load_tinystories(path: Path) -> list[str]:
    """Stories separated by `<|endoftext|>` lines."""
    docs = split_tinystories(normalize_text(read_utf8(path)))
    return _require_docs(docs, path, "empty file or only <|endoftext|> separators")


def _load_paragraphs(path: Path) -> list[str]:
    """Documents separated by blank lines."""
    docs = split_paragraphs(normalize_text(read_utf8(path)))
    return _require_docs(docs, path, "empty or whitespace-only file")


def _load_jsonl(path: Path) -> list[str]:
    """One JSON object with a string `text` field per line; blank lines skipped."""
    docs = []
    for lineno, line in enumerate(read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(
                f"{path}: line {lineno} is not valid JSON ({e.msg}); "
                'write one object per line, like {"text": "..."}'
            ) from e
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CorpusError(
                f"{path}: line {lineno} has no string `text` field; "
                'write one object per line, like {"text": "..."}'
            )
        docs.append(normalize_text(record["text"]))
    return _require_docs(_clean(docs), path, "no non-empty `text` fields")


def _load_txt_dir(path: Path) -> list[str]:
    """Every *.txt under the folder, sorted; one document per file unless it has EOT lines."""
    files = sorted(
        (p for p in path.rglob("*.txt") if p.is_file()),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise CorpusError(f"{path}: folder has no *.txt files; put one document per .txt file")
    docs = []
    for file in files:
        text = normalize_text(read_utf8(file))
        docs.extend(split_tinystories(text) if has_eot_lines(text) else _clean([text]))
    return _require_docs(docs, path, "every .txt file is empty")


def _load_auto_file(path: Path) -> list[str]:
    """A single text file: TinyStories layout if it has EOT lines, else blank-line paragraphs."""
    text = normalize_text(read_utf8(path))
    if has_eot_lines(text):
        return _require_docs(split_tinystories(text), path, "only <|endoftext|> separators")
    return _require_docs(split_paragraphs(text), path, "empty or whitespace-only file")


def resolve_format(path: Path, fmt: str) -> str:
    """Pick the concrete format for `fmt="auto"` from the path; check explicit ones."""
    if fmt not in FORMATS:
        raise CorpusError(f"{path}: unknown corpus format {fmt!r}; use one of {FORMATS}")
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "txt_dir"
    if path.suffix.lower() in (".jsonl", ".json"):
        return "jsonl"
    return "auto_file"


def load_texts(path: str | os.PathLike, fmt: str = "auto") -> list[str]:
    """Load a corpus as a list of stripped, non-empty, NFC, LF-only documents, each control
    character that is not whitespace replaced by U+FFFD (with a warning)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise CorpusError(f"{path}: unknown corpus format {fmt!r}; use one of {FORMATS}")
    if not path.exists():
        raise CorpusError(f"{path}: no such file or folder; check the corpus path")
    kind = resolve_format(path, fmt)
    if (kind == "txt_dir") != path.is_dir():
        want = "a folder" if kind == "txt_dir" else "a file"
        raise CorpusError(f"{path}: format {kind!r} needs {want}; pass fmt='auto' or fix the path")
    loaders = {
        "tinystories": _load_tinystories,
        "paragraphs": _load_paragraphs,
        "jsonl": _load_jsonl,
        "txt_dir": _load_txt_dir,
        "auto_file": _load_auto_file,
    }
    docs, replaced, touched = replace_controls(loaders[kind](path))
    if replaced:
        logging.warning(
            "%s: replaced %d control characters (NUL, ESC, DEL, ...) in %d of %d documents by "
            "U+FFFD, one for one (label offsets stay valid); they are not text", path, replaced,
            touched, len(docs))
    return docs
