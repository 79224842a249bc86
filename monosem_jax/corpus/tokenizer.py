"""Byte-level BPE tokenizer (GPT-2 style) and per-token concept labels from character spans."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
MIN_VOCAB_SIZE = 256 + 1  # every byte plus the EOT special token
MAX_CONCEPTS = 32  # one bit each in a uint32 mask

# Codepoints for which str.isspace() is true; all lie below U+3001.
_WS_LIMIT = 0x3001
_IS_WS_TABLE = np.array([chr(c).isspace() for c in range(_WS_LIMIT)], dtype=bool)


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> tokenizers.Tokenizer:
    """Train a byte-level BPE tokenizer with EOT as its only special token."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size} is below {MIN_VOCAB_SIZE} (256 bytes + EOT)")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter(texts), trainer=trainer, length=len(texts))
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


def encode_texts(tok: tokenizers.Tokenizer, texts: Sequence[str]) -> list[tokenizers.Encoding]:
    """Batch-encode texts (in parallel, order kept) without adding special tokens."""
    return tok.encode_batch(list(texts), add_special_tokens=False)


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
