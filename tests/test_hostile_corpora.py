"""Hostile corpora finish or fail clearly: over-long words, over-long documents, many tiny
documents, control characters, UTF-16 files (small versions of issue 15's cases)."""

import json
import logging
import random

import numpy as np
import pytest
from tokenizers import Regex, pre_tokenizers

from monosem_jax.configs.pipeline import tiny
from monosem_jax.corpus import dataset, labels, loaders, main, prepare
from monosem_jax.corpus.tokenizer import (
    GPT2_PATTERN,
    MAX_WORD_CHARS,
    encode_texts,
    load_tokenizer,
    pre_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Every kind of GPT-2 piece (contractions, letters, digits, other, whitespace runs) in short runs.
ORDINARY = [
    "The cat's toy wasn't there; they'll find it, I'd say.\n\n  Then 42 dogs ran—fast!!!",
    "Le café était fermé; où est la forêt? Ça va, Zoé.\t\tTabs   and   spaces \n",
    "Mixed 日本語テキスト and emoji 😀😀 and 3.14159, ١٢٣ and “quotes” … ‘here’.",
    "Line\r\nwith CR\rand form\x0cfeed, NEL\x85 and NBSP\xa0here.",
]


def _pieces(pre, text):
    return pre.pre_tokenize_str(text)


def _letters(n: int, seed: int = 0) -> str:
    return "".join(random.Random(seed).choices(_LETTERS, k=n))


@pytest.fixture(scope="module")
def hostile_texts():
    """A 200 kB line of letters, long runs of each piece kind, controls, and ordinary stories."""
    long_runs = (
        "x" * 300 + " " + "7" * 200 + " " + "!" * 150 + " " * 130 + "end " + "日" * 100
        + "\n" * 80 + "é" * 70
    )
    controls = "NUL\x00here, ESC\x1b[31mred\x1b[0m, BEL\x07, DEL\x7f, C1\x9b done."
    ordinary = [f"Story {i}: {ORDINARY[i % len(ORDINARY)]}" for i in range(40)]
    return [_letters(200_000), long_runs, controls, *ordinary]


@pytest.fixture(scope="module")
def tok(hostile_texts):
    # Without the word cap, the 200 kB line alone keeps the trainer busy for about 40 s.
    return train_tokenizer(hostile_texts, 400)


# --- the word cap -----------------------------------------------------------------------------


def test_gpt2_pattern_is_the_byte_level_rule():
    # Our pattern, unbounded, splits exactly like the library's ByteLevel regex, long runs too.
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False)
    ours = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    for text in [*ORDINARY, "a" * 500 + " " * 200 + "b", "9" * 300]:
        assert _pieces(ours, text) == _pieces(gpt2, text)


def test_ordinary_text_pre_tokenizes_as_gpt2():
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rng = random.Random(1)
    alphabet = list("abXYéж日本") + list("07٣") + list(".,'!?-…“😀") + list(" \t\n\r\u3000\xa0")
    fuzz = ["".join(rng.choices(alphabet, k=rng.randint(0, 60))) for _ in range(2000)]
    for text in [*ORDINARY, *fuzz, "a" * MAX_WORD_CHARS, " " + "b" * MAX_WORD_CHARS]:
        assert _pieces(pre_tokenizer(), text) == _pieces(gpt2, text), repr(text)


@pytest.mark.parametrize(
    "run", ["x" * 300, "7" * 200, "!" * 150, " " * 130 + "a", "日" * 100],
    ids=["letters", "digits", "symbols", "spaces", "cjk"],
)
def test_long_runs_become_pieces_of_max_word_chars(run):
    pieces = _pieces(pre_tokenizer(), run)
    spans = [end - start for _, (start, end) in pieces]
    assert max(spans) == MAX_WORD_CHARS
    assert sum(spans) == len(run) and pieces[0][1][0] == 0  # the pieces tile the text


def test_hostile_texts_round_trip(tok, hostile_texts):
    for text in [*hostile_texts, *ORDINARY]:
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text


def test_encoding_applies_the_cap_training_did(tok, hostile_texts, tmp_path):
    # A long run encodes as its MAX_WORD_CHARS pieces, each on its own; the saved file keeps it.
    run = hostile_texts[0][:1000]
    chunks = [run[i : i + MAX_WORD_CHARS] for i in range(0, len(run), MAX_WORD_CHARS)]
    by_chunk = [i for c in chunks for i in tok.encode(c, add_special_tokens=False).ids]
    assert tok.encode(run, add_special_tokens=False).ids == by_chunk
    save_tokenizer(tok, tmp_path / "tok.json")
    assert load_tokenizer(tmp_path / "tok.json").encode(run).ids == by_chunk
    assert json.loads(tok.to_str())["pre_tokenizer"]["type"] == "Sequence"


def test_progress_is_logged(hostile_texts, tok, caplog):
    caplog.set_level(logging.INFO)
    again = train_tokenizer(hostile_texts, 400, progress_every_s=0.0)
    assert again.to_str() == tok.to_str()
    read = [r.getMessage() for r in caplog.records if "tokenizer: read" in r.getMessage()]
    assert read[0].startswith("tokenizer: read 1/") and "choosing the merges" in read[-1]
    caplog.clear()
    encodings = encode_texts(tok, hostile_texts, chars_per_batch=1000, progress_every_s=0.0)
    assert [e.ids for e in encodings] == [e.ids for e in encode_texts(tok, hostile_texts)]
    assert any("tokenizer: encoded 1/" in r.getMessage() for r in caplog.records)


# --- control characters and UTF-16 ------------------------------------------------------------


def test_controls_are_replaced_one_for_one(tmp_path, caplog):
    path = tmp_path / "s.txt"
    path.write_bytes("a\x00b\x1b[0m\x7f\x9b\n<|endoftext|>\nclean\tone\x0c\x1c\x85 x\n".encode())
    with caplog.at_level(logging.WARNING):
        docs = loaders.load_texts(path)
    # Whitespace controls (tab, form feed, separators, NEL) are text and stay.
    assert docs == ["a\ufffdb\ufffd[0m\ufffd\ufffd", "clean\tone\x0c\x1c\x85 x"]
    assert "replaced 4 control characters" in caplog.text and "1 of 2 documents" in caplog.text


def test_label_offsets_survive_control_replacement(tmp_path):
    text = "A\x00\x00 cat sat."
    (tmp_path / "s.txt").write_text(text)
    labels.write_labels(tmp_path / "l.jsonl", [[labels.Span(4, 7, "animal")]])
    docs = loaders.load_texts(tmp_path / "s.txt")
    spans, _ = labels.load_labels(tmp_path / "l.jsonl", docs)
    assert docs[0][spans[0][0].start : spans[0][0].end] == "cat"


def test_utf16_files_fail_clearly(tmp_path):
    text = "Once upon a time.\n<|endoftext|>\n" * 20
    (tmp_path / "le.txt").write_bytes(text.encode("utf-16-le"))
    with pytest.raises(loaders.CorpusError, match=r"le.txt: .* NUL bytes.*iconv -f utf-16"):
        loaders.load_texts(tmp_path / "le.txt")
    (tmp_path / "bom.txt").write_bytes(text.encode("utf-16"))
    with pytest.raises(loaders.CorpusError, match=r"bom.txt: starts with a UTF-16 byte-order"):
        loaders.load_texts(tmp_path / "bom.txt")


# --- the document cap -------------------------------------------------------------------------


def test_cap_documents_cuts_and_drops_spans_past_the_cut():
    texts = ["short", "a b c d e f g h", "x" * 9]
    spans = [(), (labels.Span(0, 1, "n"), labels.Span(2, 3, "n"), labels.Span(6, 9, "n")), ()]
    capped, capped_spans, num_cut, dropped = prepare.cap_documents(texts, spans, 7)
    assert capped == ["short", "a b c d", "x" * 7]  # the cut is right-stripped
    assert (num_cut, dropped) == (2, 1) and capped_spans[1] == spans[1][:2]
    assert texts[1] == "a b c d e f g h"  # the caller's lists are left alone
    assert prepare.cap_documents(texts, None, 0) == (texts, None, 0, 0)


def _config(corpus_path, **corpus):
    config = tiny.get_config("smoke")
    config.corpus.path = str(corpus_path)
    config.corpus.update(corpus)
    return config


def _dataset_docs(data_dir):
    tok = dataset.load_dataset_tokenizer(data_dir)
    docs = []
    for name in dataset.SPLITS:
        split = dataset.load_split(data_dir, name)
        ends = [*(split.doc_starts_D[1:] - 1), len(split.tokens_N)]
        for s, e in zip(split.doc_starts_D, ends, strict=True):
            docs.append(tok.decode(np.asarray(split.tokens_N[s:e]).tolist()))
    return docs


def test_prepare_a_hostile_corpus(tmp_path, caplog):
    # A 200 kB line, 300 one-word stories and a story of controls: it finishes, cuts the long
    # story with a warning, and its dataset decodes back to the (capped, cleaned) documents.
    stories = [_letters(200_000, seed=2), *(_letters(5, seed=i) for i in range(300)),
               "Bad\x00bytes\x07 and \x1b[1m escapes."]
    path = tmp_path / "hostile.txt"
    path.write_text("".join(s + "\n<|endoftext|>\n" for s in stories))
    with caplog.at_level(logging.WARNING):
        summary = prepare.prepare(_config(path, max_document_chars=50_000), str(tmp_path / "w"))
    assert "cut 1 of 302 documents to corpus.max_document_chars=50000" in caplog.text
    assert "replaced 3 control characters" in caplog.text
    expected = [stories[0][:50_000], *stories[1:-1], "Bad\ufffdbytes\ufffd and \ufffd[1m escapes."]
    assert summary["documents"] == 302 and summary["characters"] == sum(map(len, expected))
    assert summary["documents_cut"] == 1
    assert sorted(_dataset_docs(tmp_path / "w" / "data")) == sorted(expected)


def test_one_document_fails_before_writing(tmp_path, run_binary):
    path = tmp_path / "one_line.txt"
    path.write_text(_letters(20_000) + "\n")
    workdir = tmp_path / "w"
    out = run_binary(main.run_main, f"--workdir={workdir}",
                     "--config=monosem_jax/configs/pipeline/tiny.py:smoke",
                     f"--config.corpus.path={path}")
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1
    assert "1 documents gives 0 eval documents" in errors[0] and "more documents" in errors[0]
    assert not workdir.exists()  # nothing written, no tokenizer trained


def test_negative_document_cap_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"config.corpus.max_document_chars=-1 is invalid"):
        prepare.configs_from(_config(tmp_path / "x.txt", max_document_chars=-1))
