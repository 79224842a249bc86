"""Tokenized corpus on disk: flat nanoGPT-style token arrays with document starts and labels."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from monosem_jax import atomic_dirs
from monosem_jax.corpus.tokenizer import (
    EOT,
    batch_concept_masks,
    encode_texts,
    eot_id,
    save_tokenizer,
    tokenizer_hash,
)

SPLITS = ("train", "eval")
FORMAT_VERSION = 1
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of the tokenized corpus: `EOT d0 EOT d1 ...` with per-token labels."""

    tokens_N: np.ndarray  # uint16 if vocab <= 65535 else uint32 (memmap when loaded)
    doc_starts_D: np.ndarray  # int64 index of each document's first token (after its EOT)
    labels_N: np.ndarray | None  # uint32 concept bitmask per token; None when unlabelled


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every token id."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def split_documents(num_docs: int, eval_fraction: float, seed: int) -> np.ndarray:
    """Boolean [D] eval mask: a seeded random round(eval_fraction * D) documents."""
    num_eval = round(eval_fraction * num_docs)
    if not 1 <= num_eval <= num_docs - 1:
        raise ValueError(
            f"eval_fraction={eval_fraction} of {num_docs} documents gives {num_eval} eval "
            "documents; need at least 1 in eval and 1 in train: use a corpus with more documents "
            "(a file without <|endoftext|> lines or blank lines is one document) or another "
            "eval fraction (tokenizer.eval_fraction)"
        )
    perm_D = np.random.default_rng(seed).permutation(num_docs)
    is_eval_D = np.zeros(num_docs, dtype=bool)
    is_eval_D[perm_D[:num_eval]] = True
    return is_eval_D


def _assemble(
    ids_per_doc: Sequence[np.ndarray],
    labels_per_doc: Sequence[np.ndarray] | None,
    eot: int,
    dtype: np.dtype,
) -> Split:
    """Concatenate documents as `EOT d0 EOT d1 ...`; EOT tokens get label 0."""
    lengths_D = np.array([len(ids) for ids in ids_per_doc], dtype=np.int64)
    doc_starts_D = np.cumsum(lengths_D + 1) - lengths_D
    eot_1 = np.array([eot], dtype=dtype)
    tokens_N = np.concatenate(
        [x for ids in ids_per_doc for x in (eot_1, ids)] + [np.zeros(0, dtype)]
    ).astype(dtype, copy=False)
    labels_N = None
    if labels_per_doc is not None:
        zero_1 = np.zeros(1, dtype=np.uint32)
        labels_N = np.concatenate(
            [x for lab in labels_per_doc for x in (zero_1, lab)] + [np.zeros(0, np.uint32)]
        ).astype(np.uint32, copy=False)
    return Split(tokens_N=tokens_N, doc_starts_D=doc_starts_D.astype(np.int64), labels_N=labels_N)


def _offsets(encoding: tokenizers.Encoding) -> np.ndarray:
    """Character offsets [T, 2] of an encoding (fromiter beats np.array on tuple lists)."""
    flat = np.fromiter(itertools.chain.from_iterable(encoding.offsets), dtype=np.int64)
    return flat.reshape(-1, 2)


def _write_split(dir_path: Path, name: str, split: Split) -> None:
    """Save one split's arrays as .npy files."""
    np.save(dir_path / f"{name}.tokens.npy", split.tokens_N)
    np.save(dir_path / f"{name}.doc_starts.npy", split.doc_starts_D)
    if split.labels_N is not None:
        np.save(dir_path / f"{name}.labels.npy", split.labels_N)


def _replace_dir(tmp_dir: Path, out_dir: Path) -> None:
    """Move a finished temp dir into place, replacing an older dataset there."""
    if not out_dir.exists():
        os.rename(tmp_dir, out_dir)
        return
    if any(out_dir.iterdir()) and not (out_dir / META_FILE).exists():
        shutil.rmtree(tmp_dir)
        raise FileExistsError(f"{out_dir} exists and is not a dataset; pick another out_dir")
    # Directory renames can't overwrite a non-empty target: move the old one aside first.
    old_dir = Path(atomic_dirs.temp_dir(str(out_dir.parent), out_dir.name, "old"))
    os.rename(out_dir, old_dir / "data")
    os.rename(tmp_dir, out_dir)
    shutil.rmtree(old_dir)


def build_dataset(
    tok: tokenizers.Tokenizer,
    texts: Sequence[str],
    spans_per_text: Sequence[Sequence[Any]] | None,
    concepts: Sequence[str],
    eval_fraction: float,
    seed: int,
    out_dir: str | os.PathLike,
) -> dict:
    """Tokenize, label and split texts by document, write them atomically; return the meta."""
    out_dir = Path(out_dir)
    if spans_per_text is not None and len(spans_per_text) != len(texts):
        raise ValueError(f"{len(spans_per_text)} span lists for {len(texts)} texts")
    # A literal EOT inside a text would be encoded as the special token and fake a boundary.
    bad = next((i for i, t in enumerate(texts) if EOT in t), None)
    if bad is not None:
        raise ValueError(f"text {bad} contains {EOT}; split documents on it before building")
    is_eval_D = split_documents(len(texts), eval_fraction, seed)
    vocab_size = tok.get_vocab_size()
    dtype = token_dtype(vocab_size)
    eot = eot_id(tok)

    encodings = encode_texts(tok, texts)
    ids_per_doc = [np.asarray(e.ids, dtype=dtype) for e in encodings]
    labels_per_doc = None
    if spans_per_text is not None:
        offsets = [_offsets(e) for e in encodings]
        labels_per_doc = batch_concept_masks(offsets, texts, spans_per_text, concepts)
    del encodings

    splits = {}
    for name, want_eval in (("train", False), ("eval", True)):
        idx = np.flatnonzero(is_eval_D == want_eval)
        labels = None if labels_per_doc is None else [labels_per_doc[i] for i in idx]
        splits[name] = _assemble([ids_per_doc[i] for i in idx], labels, eot, dtype)

    meta = {
        "format_version": FORMAT_VERSION,
        "vocab_size": vocab_size,
        "eot_id": eot,
        "tokenizer_hash": tokenizer_hash(tok),
        "concepts": list(concepts) if spans_per_text is not None else [],
        "labelled": spans_per_text is not None,
        "num_docs": {k: int(len(s.doc_starts_D)) for k, s in splits.items()},
        "num_tokens": {k: int(len(s.tokens_N)) for k, s in splits.items()},
        "eval_fraction": float(eval_fraction),
        "seed": int(seed),
        "dtype": dtype.name,
    }
    tmp_dir = Path(atomic_dirs.temp_dir(str(out_dir.parent), out_dir.name))
    try:
        for name, split in splits.items():
            _write_split(tmp_dir, name, split)
        save_tokenizer(tok, tmp_dir / TOKENIZER_FILE)
        # meta.json last: its presence marks a complete dataset even inside the temp dir.
        (tmp_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        _replace_dir(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return meta


def load_meta(out_dir: str | os.PathLike) -> dict:
    """Read meta.json of a dataset written by build_dataset."""
    path = Path(out_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no complete dataset at {out_dir} ({META_FILE} missing); run build_dataset first"
        )
    return json.loads(path.read_text())


def load_split(out_dir: str | os.PathLike, split: str) -> Split:
    """Memory-map one split ("train" or "eval") of a dataset written by build_dataset."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    meta = load_meta(out_dir)
    out_dir = Path(out_dir)
    names = ["tokens", "doc_starts"] + (["labels"] if meta.get("labelled") else [])
    paths = {n: out_dir / f"{split}.{n}.npy" for n in names}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"incomplete dataset at {out_dir}: missing {missing}; rebuild it with build_dataset"
        )
    arrays = {n: np.load(p, mmap_mode="r") for n, p in paths.items()}
    return Split(
        tokens_N=arrays["tokens"], doc_starts_D=arrays["doc_starts"], labels_N=arrays.get("labels")
    )


def load_dataset_tokenizer(out_dir: str | os.PathLike) -> tokenizers.Tokenizer:
    """The tokenizer saved alongside a dataset."""
    path = Path(out_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {TOKENIZER_FILE} in {out_dir}; run build_dataset first")
    return tokenizers.Tokenizer.from_file(os.fspath(path))


def unigram_entropy(tokens_N: np.ndarray, vocab_size: int) -> float:
    """Entropy in nats of the token unigram distribution."""
    if len(tokens_N) == 0:
        raise ValueError("unigram entropy of an empty token array is undefined")
    counts_V = np.bincount(np.asarray(tokens_N), minlength=vocab_size).astype(np.float64)
    p_V = counts_V[counts_V > 0] / counts_V.sum()
    return float(-(p_V * np.log(p_V)).sum())
