"""Byte-level BPE tokenizer (GPT-2 style) and per-token concept labels from character spans."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tokenizers
from absl import logging
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
MIN_VOCAB_SIZE = 256 + 1  # every byte plus the EOT special token
MAX_CONCEPTS = 32  # one bit each in a uint32 mask

# The longest "word" (pre-tokenizer piece) BPE sees, in characters, at training and encoding
# alike. The BPE trainer's cost grows with the square of a word's length (measured: one 20 kB
# word 0.25 s, one 100 kB word 6 s; so a 5 MB line without whitespace would take hours), so an
# unbroken run is cut into pieces of at most this many characters (4x as many bytes at most).
# 64 lies above the words of natural text (the longest English dictionary word has 45 letters)
# and far above the longest merge a vocabulary of a few thousand tokens learns, so ordinary text
# pre-tokenizes exactly as with GPT-2's rule.
MAX_WORD_CHARS = 64
# GPT-2's pre-tokenizer regex (the one `pre_tokenizers.ByteLevel(use_regex=True)` applies); ours
# bounds each of its runs `+` to MAX_WORD_CHARS: on runs no longer than that the pieces are
# GPT-2's, and a longer run becomes consecutive pieces of MAX_WORD_CHARS characters.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_BOUNDED_PATTERN = GPT2_PATTERN.replace("+", f"{{1,{MAX_WORD_CHARS}}}")
# Log the tokenizer's progress (training, encoding) at most this often.
PROGRESS_EVERY_S = 10.0

# Codepoints for which str.isspace() is true; all lie below U+3001.
_WS_LIMIT = 0x3001
_IS_WS_TABLE = np.array([chr(c).isspace() for c in range(_WS_LIMIT)], dtype=bool)


def pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """GPT-2's byte-level pre-tokenizer with words capped at MAX_WORD_CHARS characters.

    Saved in tokenizer.json, so every encode (the dataset, prompts, the browser) applies the cap
    that training did; the pieces tile the text, so decoding stays lossless.
    """
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_BOUNDED_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _logged_progress(texts: Sequence[str], every_s: float) -> Iterator[str]:
    """The texts, logging every `every_s` seconds how many the trainer has read."""
    t_start = last = time.monotonic()
    for i, text in enumerate(texts):
        now = time.monotonic()
        if i and now - last >= every_s:
            logging.info("tokenizer: read %d/%d documents (%.0f%%) in %.0f s",
                         i, len(texts), 100 * i / len(texts), now - t_start)
            last = now
        yield text
    if last > t_start:  # progress was logged: say what the remaining silence is
        logging.info("tokenizer: read all %d documents in %.0f s; now choosing the merges",
                     len(texts), time.monotonic() - t_start)


def train_tokenizer(
    texts: Sequence[str], vocab_size: int, *, progress_every_s: float = PROGRESS_EVERY_S
) -> tokenizers.Tokenizer:
    """Train a byte-level BPE tokenizer with EOT as its only special token (progress logged
    every `progress_every_s` seconds while it reads the texts)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size} is below {MIN_VOCAB_SIZE} (256 bytes + EOT)")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The trainer counts words as it reads the iterator (most of its time), then merges.
    texts_read = _logged_progress(texts, progress_every_s)
    tok.train_from_iterator(texts_read, trainer=trainer, length=len(texts))
    return tok


def save_tokenizer(tok: tokenizers.Tokenizer, path: str | os.PathLike) -> None:
    """Write the tokenizer as a single JSON file."""
    tok.save(os.fspath(path))


def load_tokenizer(path: str | os.PathLike) -> tokenizers.Tokenizer:
    """Read a tokenizer written by save_tokenizer."""
    return tokenizers.Tokenizer.from_file(os.fspath(path))


def tokenizer_hash(tok: tokenizers.Tokenizer) -> str:
    """Sha256 hex digest of the tokenizer's JSON, for provenance."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()


def eot_id(tok: tokenizers.Tokenizer) -> int:
    """Id of the EOT special token."""
    tid = tok.token_to_id(EOT)
    if tid is None:
        raise ValueError(f"tokenizer has no {EOT} token; train it with train_tokenizer")
    return tid


def _batches_by_chars(texts: Sequence[str], chars_per_batch: int) -> Iterator[list[str]]:
    """Consecutive runs of texts, each of about chars_per_batch characters (one text at least)."""
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= chars_per_batch:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encode_texts(
    tok: tokenizers.Tokenizer,
    texts: Sequence[str],
    *,
    chars_per_batch: int = 4_000_000,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> list[tokenizers.Encoding]:
    """Batch-encode texts (in parallel, order kept) without adding special tokens, in batches of
    about `chars_per_batch` characters, logging progress every `progress_every_s` seconds."""
    encodings: list[tokenizers.Encoding] = []
    t_start = last = time.monotonic()
    for batch in _batches_by_chars(texts, chars_per_batch):
        encodings.extend(tok.encode_batch(batch, add_special_tokens=False))
        now = time.monotonic()
        if now - last >= progress_every_s and len(encodings) < len(texts):
            logging.info("tokenizer: encoded %d/%d documents (%.0f%%) in %.0f s", len(encodings),
                         len(texts), 100 * len(encodings) / len(texts), now - t_start)
            last = now
    return encodings


def _span_fields(span: Any) -> tuple[int, int, str]:
    """(start, end, concept) from a Span-like object or a plain tuple."""
    if hasattr(span, "concept"):
        return int(span.start), int(span.end), span.concept
    start, end, concept = span
    return int(start), int(end), concept


def _is_space(codepoints: np.ndarray) -> np.ndarray:
    """Vectorised str.isspace() over an array of codepoints."""
    clipped = np.minimum(codepoints, _WS_LIMIT - 1)
    return _IS_WS_TABLE[clipped] & (codepoints < _WS_LIMIT)


def codepoints(text: str) -> np.ndarray:
    """The text's unicode codepoints as a uint32 array (one per Python character)."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def skip_whitespace(text: str, starts_N: np.ndarray) -> np.ndarray:
    """Advance each start offset past the whitespace characters of text."""
    is_ws = _is_space(codepoints(text))
    n = len(is_ws)
    # next_non_ws[i] = first index >= i holding a non-space character (n if none).
    idx = np.where(is_ws, n, np.arange(n, dtype=np.int64))
    next_non_ws = np.append(np.minimum.accumulate(idx[::-1])[::-1], n)
    return next_non_ws[np.clip(starts_N, 0, n)]


def _spans_to_arrays(
    spans: Sequence[Any], concepts: Sequence[str], text_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check spans and return (start_J, end_J, concept_index_J)."""
    if len(concepts) > MAX_CONCEPTS:
        raise ValueError(f"{len(concepts)} concepts do not fit a uint32 mask (max {MAX_CONCEPTS})")
    index = {c: i for i, c in enumerate(concepts)}
    fields = [_span_fields(s) for s in spans]
    for start, end, concept in fields:
        if concept not in index:
            raise ValueError(f"span concept {concept!r} is not one of {tuple(concepts)}")
        if not 0 <= start <= end <= text_len:
            raise ValueError(f"span [{start}, {end}) is outside the text (length {text_len})")
    start_J = np.array([f[0] for f in fields], dtype=np.int64)
    end_J = np.array([f[1] for f in fields], dtype=np.int64)
    concept_J = np.array([index[f[2]] for f in fields], dtype=np.int64)
    return start_J, end_J, concept_J


def _mask_from_arrays(
    tok_start_N: np.ndarray,
    tok_end_N: np.ndarray,
    start_J: np.ndarray,
    end_J: np.ndarray,
    concept_J: np.ndarray,
    num_concepts: int,
) -> np.ndarray:
    """Bit c of token t: [tok_start, tok_end) is non-empty and inside one span of concept c."""
    mask_N = np.zeros(len(tok_start_N), dtype=np.uint32)
    nonempty_N = tok_start_N < tok_end_N
    for c in range(num_concepts):
        sel = concept_J == c
        if not sel.any():
            continue
        order = np.argsort(start_J[sel], kind="stable")
        starts = start_J[sel][order]
        # Some span with start <= s and end >= e exists iff the largest end among spans
        # starting at or before s reaches e; this also handles overlapping spans exactly.
        max_end = np.maximum.accumulate(end_J[sel][order])
        k_N = np.searchsorted(starts, tok_start_N, side="right") - 1
        inside_N = (k_N >= 0) & (max_end[np.maximum(k_N, 0)] >= tok_end_N) & nonempty_N
        mask_N[inside_N] |= np.uint32(1 << c)
    return mask_N


def token_concept_mask(
    encoding_offsets: Sequence[tuple[int, int]] | np.ndarray,
    text: str,
    spans: Sequence[Any],
    concepts: Sequence[str],
) -> np.ndarray:
    """Uint32 bitmask [N]: bit c set iff the token, minus leading whitespace, lies in a c-span."""
    offsets_N2 = np.asarray(encoding_offsets, dtype=np.int64).reshape(-1, 2)
    start_J, end_J, concept_J = _spans_to_arrays(spans, concepts, len(text))
    tok_start_N = skip_whitespace(text, offsets_N2[:, 0])
    return _mask_from_arrays(
        tok_start_N, offsets_N2[:, 1], start_J, end_J, concept_J, len(concepts)
    )


def batch_concept_masks(
    offsets_per_text: Sequence[np.ndarray],
    texts: Sequence[str],
    spans_per_text: Sequence[Sequence[Any]],
    concepts: Sequence[str],
) -> list[np.ndarray]:
    """token_concept_mask for many documents at once, vectorised over the whole corpus."""
    if not len(offsets_per_text) == len(texts) == len(spans_per_text):
        raise ValueError("offsets_per_text, texts and spans_per_text must have the same length")
    # Shift every document into one shared character axis; spans never leave their document,
    # so a token can only fall inside spans of its own document.
    text_lens = np.array([len(t) for t in texts], dtype=np.int64)
    base_A = np.cumsum(text_lens) - text_lens
    num_tok_A = np.array([len(o) for o in offsets_per_text], dtype=np.int64)
    offsets_N2 = np.concatenate(
        [np.asarray(o, dtype=np.int64).reshape(-1, 2) for o in offsets_per_text]
        + [np.zeros((0, 2), dtype=np.int64)]
    )
    offsets_N2 = offsets_N2 + np.repeat(base_A, num_tok_A)[:, None]
    per_doc = [
        _spans_to_arrays(s, concepts, n) for s, n in zip(spans_per_text, text_lens, strict=True)
    ]
    span_base = np.repeat(base_A, [len(p[0]) for p in per_doc])
    start_J = np.concatenate([p[0] for p in per_doc] + [np.zeros(0, np.int64)]) + span_base
    end_J = np.concatenate([p[1] for p in per_doc] + [np.zeros(0, np.int64)]) + span_base
    concept_J = np.concatenate([p[2] for p in per_doc] + [np.zeros(0, np.int64)])
    tok_start_N = skip_whitespace("".join(texts), offsets_N2[:, 0])
    mask_N = _mask_from_arrays(
        tok_start_N, offsets_N2[:, 1], start_J, end_J, concept_J, len(concepts)
    )
    return np.split(mask_N, np.cumsum(num_tok_A)[:-1])
