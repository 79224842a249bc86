"""Tests for the byte-level BPE tokenizer, token concept masks, and the tokenized dataset."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from monosem_jax.corpus.dataset import (
    build_dataset,
    load_dataset_tokenizer,
    load_meta,
    load_split,
    unigram_entropy,
)
from monosem_jax.corpus.tokenizer import (
    EOT,
    batch_concept_masks,
    encode_texts,
    eot_id,
    load_tokenizer,
    save_tokenizer,
    token_concept_mask,
    tokenizer_hash,
    train_tokenizer,
)

Span = collections.namedtuple("Span", "start end concept")
CONCEPTS = ("animal", "name", "place")
NAMES = ("Tom", "Lily", "Zoé", "Ben")
ANIMALS = ("cat", "dog", "bird", "fish")
PLACES = ("park", "forêt", "garden")
VOCAB = 400


def _story(i: int) -> tuple[str, list[Span]]:
    """A small story with spans for the name, animal and place it mentions."""
    name, animal, place = NAMES[i % 4], ANIMALS[(i // 4) % 4], PLACES[i % 3]
    parts = [
        (f"Once upon a time, {i} days ago, ", None),
        (name, "name"),
        (" saw a ", None),
        (animal, "animal"),
        (" in the ", None),
        (place, "place"),
        (".\n“Hello,” said ", None),
        (name, "name"),
        (f". The {animal} was très happy!" + " The end." * (i % 3), None),
    ]
    text, spans = "", []
    for piece, concept in parts:
        if concept is not None:
            spans.append(Span(len(text), len(text) + len(piece), concept))
        text += piece
    return text, spans


STORIES = [_story(i) for i in range(50)]
TEXTS = [t for t, _ in STORIES]
SPANS = [s for _, s in STORIES]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, VOCAB)


def _reference_mask(offsets, text, spans, concepts):
    """Slow per-token statement of the labelling rule."""
    out = []
    for s, e in offsets:
        while s < len(text) and text[s].isspace():
            s += 1
        bits = 0
        for c, name in enumerate(concepts):
            if s < e and any(sp.concept == name and sp.start <= s and e <= sp.end for sp in spans):
                bits |= 1 << c
        out.append(bits)
    return np.array(out, dtype=np.uint32)


# --- tokenizer ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "The cat sat on the mat.\nThen it slept.\n\n  Indented line\tand tab.",
        "Le café était fermé; où est la forêt? Ça va, Zoé.",
        "She said, “Don’t go!” — and left… ‘quietly’.",
        "Mixed 日本語 and emoji 😀 and numbers 12345.",
    ],
)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text


def test_eot_is_single_special_token(tok):
    eot = eot_id(tok)
    assert tok.encode(EOT).ids == [eot]
    assert tok.id_to_token(eot) == EOT
    assert tok.decode([eot], skip_special_tokens=False) == EOT


def test_vocab_size_respected(tok):
    assert 257 <= tok.get_vocab_size() <= VOCAB
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(TEXTS, 256)


def test_encode_texts_adds_nothing(tok):
    encodings = encode_texts(tok, TEXTS[:3])
    assert [e.ids for e in encodings] == [
        tok.encode(t, add_special_tokens=False).ids for t in TEXTS[:3]
    ]
    assert all(eot_id(tok) not in e.ids for e in encodings)


def test_training_is_deterministic(tok):
    again = train_tokenizer(TEXTS, VOCAB)
    assert again.to_str() == tok.to_str()
    assert tokenizer_hash(again) == tokenizer_hash(tok)
    assert len(tokenizer_hash(tok)) == 64


def test_training_is_deterministic_across_processes(tok):
    # Rust HashMaps are seeded per process, so also compare a fresh interpreter's result.
    code = (
        "import json, sys;"
        "from monosem_jax.corpus.tokenizer import train_tokenizer, tokenizer_hash;"
        "print(tokenizer_hash(train_tokenizer(json.load(sys.stdin), int(sys.argv[1]))))"
    )
    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(VOCAB)],
        input=json.dumps(TEXTS),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert out.stdout.strip() == tokenizer_hash(tok)


def test_save_load_keeps_hash(tok, tmp_path):
    save_tokenizer(tok, tmp_path / "tok.json")
    loaded = load_tokenizer(tmp_path / "tok.json")
    assert tokenizer_hash(loaded) == tokenizer_hash(tok)
    assert loaded.encode(TEXTS[0]).ids == tok.encode(TEXTS[0]).ids


# --- token_concept_mask ------------------------------------------------------------------


def _check_mask(tok, text, spans, concepts):
    """Compare against the reference and check both directions of the rule by slicing text."""
    enc = tok.encode(text, add_special_tokens=False)
    mask = token_concept_mask(enc.offsets, text, spans, concepts)
    assert mask.dtype == np.uint32 and mask.shape == (len(enc.ids),)
    np.testing.assert_array_equal(mask, _reference_mask(enc.offsets, text, spans, concepts))
    for t, (s, e) in enumerate(enc.offsets):
        piece = text[s:e].lstrip()
        s2 = e - len(piece)
        for c, name in enumerate(concepts):
            inside = any(sp.concept == name and sp.start <= s2 and e <= sp.end for sp in spans)
            assert bool(mask[t] >> c & 1) == (bool(piece) and inside), (t, text[s:e], name)
    return enc, mask


def test_mask_labels_exactly_the_span_words(tok):
    text, spans = TEXTS[5], SPANS[5]
    enc, mask = _check_mask(tok, text, spans, CONCEPTS)
    for c, name in enumerate(CONCEPTS):
        labelled = "".join(
            text[s:e].lstrip() for (s, e), m in zip(enc.offsets, mask, strict=True) if m >> c & 1
        )
        # Spans are whole words, so their tokens tile them exactly.
        assert labelled == "".join(text[sp.start : sp.end] for sp in spans if sp.concept == name)


def test_mask_non_ascii_and_tuple_spans(tok):
    text = "Zoé went to the forêt 日本 with “Ben”."
    spans = [(0, 3, "name"), (16, 21, "place"), (22, 24, "place"), (31, 34, "name")]
    assert text[16:21] == "forêt" and text[22:24] == "日本" and text[31:34] == "Ben"
    named = [Span(*s) for s in spans]
    enc, mask = _check_mask(tok, text, named, CONCEPTS)
    np.testing.assert_array_equal(mask, token_concept_mask(enc.offsets, text, spans, CONCEPTS))
    place_bit = 1 << CONCEPTS.index("place")
    # Byte pieces of a split multi-byte character share that character's offsets.
    cjk = [t for t, (s, e) in enumerate(enc.offsets) if 22 <= s and e <= 24]
    assert len(cjk) >= 2 and all(mask[t] & place_bit for t in cjk)


def test_mask_adjacent_and_overlapping_spans(tok):
    text = "catdog bird"
    enc = tok.encode(text, add_special_tokens=False)
    # Adjacent spans of one concept do not merge: a token crossing their border stays unlabelled.
    spans = [Span(0, 3, "animal"), Span(3, 6, "animal"), Span(7, 11, "name"), Span(5, 9, "name")]
    _check_mask(tok, text, spans, CONCEPTS)
    whole = token_concept_mask(enc.offsets, text, [Span(0, 11, "animal")], CONCEPTS)
    assert all(m == 1 for (s, e), m in zip(enc.offsets, whole, strict=True) if text[s:e].strip())


def test_mask_many_random_spans(tok):
    rng = np.random.default_rng(0)
    for text in TEXTS[:10]:
        starts = rng.integers(0, len(text), size=12)
        ends = np.minimum(starts + rng.integers(0, 15, size=12), len(text))
        spans = [
            Span(int(a), int(b), CONCEPTS[i % 3])
            for i, (a, b) in enumerate(zip(starts, ends, strict=True))
        ]
        _check_mask(tok, text, spans, CONCEPTS)


def test_batch_masks_match_single(tok):
    encodings = encode_texts(tok, TEXTS)
    offsets = [np.array(e.offsets).reshape(-1, 2) for e in encodings]
    batched = batch_concept_masks(offsets, TEXTS, SPANS, CONCEPTS)
    for off, text, spans, mask in zip(offsets, TEXTS, SPANS, batched, strict=True):
        np.testing.assert_array_equal(mask, token_concept_mask(off, text, spans, CONCEPTS))


def test_mask_rejects_bad_input(tok):
    offsets = tok.encode("a cat").offsets
    with pytest.raises(ValueError, match="32"):
        token_concept_mask(offsets, "a cat", [], tuple(f"c{i}" for i in range(33)))
    with pytest.raises(ValueError, match="'robot'"):
        token_concept_mask(offsets, "a cat", [Span(2, 5, "robot")], CONCEPTS)
    with pytest.raises(ValueError, match="outside"):
        token_concept_mask(offsets, "a cat", [Span(2, 9, "animal")], CONCEPTS)


# --- dataset -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset_dir(tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "tiny"
    build_dataset(tok, TEXTS, SPANS, CONCEPTS, eval_fraction=0.2, seed=3, out_dir=out)
    return out


def _docs(split):
    """Token ids of each document in a split."""
    ends = list(split.doc_starts_D[1:] - 1) + [len(split.tokens_N)]
    return [np.asarray(split.tokens_N[s:e]) for s, e in zip(split.doc_starts_D, ends, strict=True)]


def test_dataset_layout_and_round_trip(tok, dataset_dir):
    meta = load_meta(dataset_dir)
    eot = eot_id(tok)
    seen = []
    for name in ("train", "eval"):
        split = load_split(dataset_dir, name)
        assert isinstance(split.tokens_N, np.memmap) and split.tokens_N.dtype == np.uint16
        assert split.doc_starts_D.dtype == np.int64 and split.labels_N.dtype == np.uint32
        assert len(split.labels_N) == len(split.tokens_N) == meta["num_tokens"][name]
        assert len(split.doc_starts_D) == meta["num_docs"][name]
        assert split.tokens_N[0] == eot
        assert (split.tokens_N[split.doc_starts_D - 1] == eot).all()
        assert (split.tokens_N == eot).sum() == len(split.doc_starts_D)
        assert (split.labels_N[split.tokens_N == eot] == 0).all()
        for ids in _docs(split):
            seen.append(tok.decode(ids.tolist()))
    assert meta["num_docs"] == {"train": 40, "eval": 10}
    assert sorted(seen) == sorted(TEXTS)


def test_dataset_labels_round_trip(tok, dataset_dir):
    split = load_split(dataset_dir, "train")
    starts = split.doc_starts_D
    ends = list(starts[1:] - 1) + [len(split.tokens_N)]
    by_text = {t: s for t, s in zip(TEXTS, SPANS, strict=True)}
    for s, e in zip(starts, ends, strict=True):
        text = tok.decode(np.asarray(split.tokens_N[s:e]).tolist())
        enc = tok.encode(text, add_special_tokens=False)
        expected = token_concept_mask(enc.offsets, text, by_text[text], CONCEPTS)
        np.testing.assert_array_equal(split.labels_N[s:e], expected)
    assert split.labels_N.any()


def test_dataset_meta(tok, dataset_dir):
    meta = load_meta(dataset_dir)
    assert meta["vocab_size"] == tok.get_vocab_size()
    assert meta["eot_id"] == eot_id(tok)
    assert meta["tokenizer_hash"] == tokenizer_hash(tok)
    assert meta["concepts"] == list(CONCEPTS)
    assert (meta["eval_fraction"], meta["seed"], meta["dtype"]) == (0.2, 3, "uint16")
    assert json.loads((dataset_dir / "meta.json").read_text()) == meta
    assert tokenizer_hash(load_dataset_tokenizer(dataset_dir)) == tokenizer_hash(tok)
    assert not [p for p in dataset_dir.parent.iterdir() if p.name.startswith(".")]


def test_split_is_seeded_and_keeps_order(tok, tmp_path):
    def eval_texts(seed, name):
        build_dataset(tok, TEXTS, None, CONCEPTS, 0.1, seed, tmp_path / name)
        return [tok.decode(d.tolist()) for d in _docs(load_split(tmp_path / name, "eval"))]

    a, b, c = eval_texts(0, "a"), eval_texts(0, "b"), eval_texts(1, "c")
    assert a == b and a != c and len(a) == 5
    assert a == sorted(a, key=TEXTS.index)


def test_unlabelled_dataset(tok, tmp_path):
    meta = build_dataset(tok, TEXTS, None, CONCEPTS, 0.1, 0, tmp_path / "u")
    assert meta["concepts"] == [] and not (tmp_path / "u" / "train.labels.npy").exists()
    assert load_split(tmp_path / "u", "eval").labels_N is None


def test_rebuild_replaces_existing(tok, tmp_path):
    build_dataset(tok, TEXTS, None, (), 0.1, 0, tmp_path / "d")
    meta = build_dataset(tok, TEXTS[:20], None, (), 0.1, 0, tmp_path / "d")
    assert load_meta(tmp_path / "d") == meta and sum(meta["num_docs"].values()) == 20
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        build_dataset(tok, TEXTS, None, (), 0.1, 0, tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "other"]


def test_bad_build_arguments(tok, tmp_path):
    for frac in (0.0, 1.0, 0.001):
        with pytest.raises(ValueError, match="eval"):
            build_dataset(tok, TEXTS, None, (), frac, 0, tmp_path / "x")
    with pytest.raises(ValueError, match="span lists"):
        build_dataset(tok, TEXTS, SPANS[:3], CONCEPTS, 0.1, 0, tmp_path / "x")
    with pytest.raises(ValueError, match="contains"):
        build_dataset(tok, ["a", f"b{EOT}c"], None, (), 0.5, 0, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_missing_or_incomplete_dataset(tmp_path, dataset_dir):
    with pytest.raises(FileNotFoundError, match="build_dataset"):
        load_meta(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="build_dataset"):
        load_split(tmp_path / "missing", "train")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "meta.json").write_text((dataset_dir / "meta.json").read_text())
    with pytest.raises(FileNotFoundError, match="train.tokens.npy"):
        load_split(partial, "train")


def test_unigram_entropy():
    assert unigram_entropy(np.array([3, 3, 3], np.uint16), 8) == 0.0
    assert np.isclose(unigram_entropy(np.array([0, 1, 2, 3], np.uint16), 8), np.log(4))
    assert np.isclose(unigram_entropy(np.array([0, 0, 1, 1], np.uint32), 70000), np.log(2))
