"""Concept labels of a corpus: JSON lines of character spans, one line per story.

  {"story": 0, "spans": [[0, 3, "name"], [12, 19, "animal"]]}
  {"story": 1, "spans": []}

Line i holds story i (the corpus's i-th document as the loader returns it: stripped, NFC, LF line
ends, no `<|endoftext|>`); `[start, end)` are Python string (code point) offsets into that text.
The concepts are every name the file uses, sorted; one bit each in a uint32 token mask, so at most
32. Spans of the same concept in one story may not overlap (merge them); spans of different
concepts may. The generated corpus writes its labels in this format too (W/corpus/labels.jsonl).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from monosem_jax.corpus.loaders import CorpusError, read_utf8
from monosem_jax.corpus.tokenizer import MAX_CONCEPTS

FORMAT = '{"story": i, "spans": [[start, end, "concept"], ...]}'
_FIX = f"write one line per story, in corpus order, like {FORMAT}"


@dataclasses.dataclass(frozen=True)
class Span:
    """Characters [start, end) of a story's text express `concept`."""

    start: int
    end: int
    concept: str


def write_labels(path: str | os.PathLike, spans_per_story: Iterable[Sequence[Span]]) -> None:
    """Write one `{"story": i, "spans": [...]}` line per story, in order."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for i, spans in enumerate(spans_per_story):
            record = {"story": i, "spans": [[s.start, s.end, s.concept] for s in spans]}
            f.write(json.dumps(record, separators=(",", ":")) + "\n")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _short(x) -> str:
    text = json.dumps(x, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_span(where: str, k: int, item) -> Span:
    """One `[start, end, "concept"]` list, checked on its own (not against the text yet)."""
    if isinstance(item, list) and len(item) == 2:
        raise CorpusError(f"{where}: span {k} {_short(item)} has no concept; "
                          'write each span as [start, end, "concept"]')
    if not isinstance(item, list) or len(item) != 3:
        raise CorpusError(f"{where}: span {k} is {_short(item)}, not [start, end, \"concept\"]; "
                          + _FIX)
    start, end, concept = item
    if not (_is_int(start) and _is_int(end)):
        raise CorpusError(f"{where}: span {k} {_short(item)} has a non-integer offset; offsets "
                          "are whole character positions into the story text")
    if not isinstance(concept, str) or not concept.strip():
        raise CorpusError(f"{where}: span {k} {_short(item)} has a missing or empty concept; "
                          "name each span's concept with a non-empty string")
    if not 0 <= start < end:
        raise CorpusError(f"{where}: span {k} {_short(item)} is empty or negative; "
                          "need 0 <= start < end")
    return Span(start, end, concept)


def _check_no_same_concept_overlap(where: str, spans: Sequence[Span]) -> None:
    """Two spans of one concept may touch but not overlap: the union is one span."""
    ordered = sorted(spans, key=lambda s: (s.concept, s.start, s.end))
    for a, b in itertools.pairwise(ordered):
        if a.concept == b.concept and b.start < a.end:
            raise CorpusError(
                f"{where}: spans [{a.start}, {a.end}] and [{b.start}, {b.end}] of concept "
                f"{a.concept!r} overlap; merge them into one span (different concepts may overlap)"
            )


def _parse(path: Path) -> list[tuple[int, tuple[Span, ...]]]:
    """(line number, spans) per story line; blank lines skipped."""
    out = []
    for line_no, line in enumerate(read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{where}: not valid JSON ({e.msg}); {_FIX}") from e
        if not isinstance(record, dict) or not isinstance(record.get("spans"), list):
            raise CorpusError(f"{where}: no `spans` list; {_FIX}")
        story = record.get("story")
        if not _is_int(story) or story != len(out):
            raise CorpusError(f"{where}: `story` is {_short(story)}, expected {len(out)}; "
                              f"{_FIX} (story = 0, 1, 2, ... each once)")
        spans = tuple(_parse_span(where, k, item) for k, item in enumerate(record["spans"]))
        _check_no_same_concept_overlap(where, spans)
        out.append((line_no, spans))
    return out


def concepts_of(spans_per_story: Iterable[Sequence[Span]]) -> tuple[str, ...]:
    """Every concept name the spans use, sorted: the order of the bits of the token masks."""
    return tuple(sorted({s.concept for spans in spans_per_story for s in spans}))


def read_labels(path: str | os.PathLike) -> list[tuple[Span, ...]]:
    """The spans of a labels file, one tuple per story, checked on their own (not the texts)."""
    return [spans for _, spans in _parse(Path(path))]


def load_labels(
    path: str | os.PathLike, texts: Sequence[str], corpus: str = "the corpus"
) -> tuple[list[tuple[Span, ...]], tuple[str, ...]]:
    """(spans per text, concepts) of a labels file for `texts`; a CorpusError names any problem."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such labels file; check corpus.labels")
    records = _parse(path)
    if len(records) != len(texts):
        raise CorpusError(
            f"{path}: {len(records)} label lines for {len(texts)} stories in {corpus}; "
            f"{_FIX} (an empty `spans` list for a story without labels)"
        )
    for i, ((line_no, spans), text) in enumerate(zip(records, texts, strict=True)):
        for s in spans:
            if s.end > len(text):
                raise CorpusError(
                    f"{path}:{line_no}: span [{s.start}, {s.end}, {s.concept!r}] ends beyond "
                    f"story {i}'s {len(text)} characters; offsets index the story as the loader "
                    "returns it (stripped, NFC, LF line ends, no <|endoftext|>)"
                )
    spans_per_story = [spans for _, spans in records]
    concepts = concepts_of(spans_per_story)
    if len(concepts) > MAX_CONCEPTS:
        shown = ", ".join(concepts[:4])
        raise CorpusError(
            f"{path}: {len(concepts)} concepts ({shown}, ...) exceed the {MAX_CONCEPTS} a uint32 "
            "token mask holds; merge or drop concepts"
        )
    return spans_per_story, concepts
