"""Bring-your-own concept labels: `corpus.path` + `corpus.labels` (monosem_jax/corpus/labels.py)."""

import json
import os
import re
import subprocess
import sys

import pytest

from monosem_jax import report
from monosem_jax.analysis import evaluate
from monosem_jax.browser import write as browser_write
from monosem_jax.configs.pipeline import tiny
from monosem_jax.corpus import dataset, labels, loaders, prepare
from monosem_jax.corpus.loaders import CorpusError

STORY_0 = 'Once upon a time, a cat named Tom found a red ball.\n"Hello, Tom!" said Mia.'
STORY_1 = "The dog ran to the café by the sea and found a seashell."


def _span(text: str, word: str, concept: str, nth: int = 0) -> list:
    """[start, end, concept] of the nth occurrence of `word` in `text`."""
    start = -1
    for _ in range(nth + 1):
        start = text.index(word, start + 1)
    return [start, start + len(word), concept]


SPANS_0 = [
    _span(STORY_0, "cat", "animal"),
    _span(STORY_0, "Tom", "name"),
    _span(STORY_0, "Tom", "name", 1),
    _span(STORY_0, "Mia", "name"),
    _span(STORY_0, "red ball", "toy"),  # overlaps "red" of another concept: fine
    _span(STORY_0, "red", "color"),
    _span(STORY_0, "Hello, Tom!", "dialogue"),  # the text inside the quotes
]
SPANS_1 = [
    _span(STORY_1, "dog", "animal"),
    _span(STORY_1, "café", "place"),  # offsets count characters, not UTF-8 bytes
    _span(STORY_1, "sea", "place"),
    _span(STORY_1, "sea", "place", 1),  # only part of the token " seashell": not labelled
    _span(STORY_1, "seashell", "toy"),
]
CONCEPTS = ["animal", "color", "dialogue", "name", "place", "toy"]

# Every token of each story (decoded) and the concepts it carries: a token carries a concept
# when its text less leading whitespace lies inside one of that concept's spans.
EXPECTED = {
    STORY_0: [
        ("Once", []), (" upon", []), (" a", []), (" time", []), (",", []), (" a", []),
        (" cat", ["animal"]), (" named", []), (" Tom", ["name"]), (" found", []), (" a", []),
        (" red", ["color", "toy"]), (" ball", ["toy"]), (".", []), ("\n", []), ('"', []),
        ("Hello", ["dialogue"]), (",", ["dialogue"]), (" Tom", ["dialogue", "name"]),
        ('!"', []),  # crosses the end of the dialogue span
        (" said", []), (" Mia", ["name"]), (".", []),
    ],
    STORY_1: [
        ("The", []), (" dog", ["animal"]), (" ran", []), (" to", []), (" the", []),
        (" café", ["place"]), (" by", []), (" the", []), (" sea", ["place"]), (" and", []),
        (" found", []), (" a", []), (" seashell", ["toy"]), (".", []),
    ],
}


def _write_corpus(dir_path, stories, spans_per_story):
    """A TinyStories-format file and its labels file, as a user would write them."""
    text_path, labels_path = dir_path / "stories.txt", dir_path / "labels.jsonl"
    text_path.write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories), encoding="utf-8")
    lines = [json.dumps({"story": i, "spans": s}) for i, s in enumerate(spans_per_story)]
    labels_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return text_path, labels_path


def _config(text_path, labels_path, **tokenizer):
    config = tiny.get_config("smoke")
    config.corpus.path = str(text_path)
    config.corpus.labels = str(labels_path)
    config.tokenizer.update(tokenizer)
    return config


def _labelled_tokens(data_dir) -> dict[str, list]:
    """{story text: [(decoded token, [concepts]), ...]} over both splits."""
    tok = dataset.load_dataset_tokenizer(data_dir)
    concepts = dataset.load_meta(data_dir)["concepts"]
    out = {}
    for name in dataset.SPLITS:
        split = dataset.load_split(data_dir, name)
        ends = list(split.doc_starts_D[1:] - 1) + [len(split.tokens_N)]
        for start, end in zip(split.doc_starts_D, ends, strict=True):
            ids, masks = split.tokens_N[start:end], split.labels_N[start:end]
            assert split.tokens_N[start - 1] == tok.token_to_id("<|endoftext|>")
            assert split.labels_N[start - 1] == 0
            rows = [(tok.decode([int(t)]), [c for i, c in enumerate(concepts) if m >> i & 1])
                    for t, m in zip(ids, masks, strict=True)]
            out["".join(r[0] for r in rows)] = rows
    return out


def test_hand_made_labels_token_by_token(tmp_path):
    text_path, labels_path = _write_corpus(tmp_path, [STORY_0, STORY_1], [SPANS_0, SPANS_1])
    workdir = tmp_path / "w"
    # vocab 512 on two tiny stories: BPE merges every word into one token.
    summary = prepare.prepare(_config(text_path, labels_path, eval_fraction=0.5), str(workdir))
    assert dataset.load_meta(workdir / "data")["concepts"] == CONCEPTS == summary["concepts"]
    assert _labelled_tokens(workdir / "data") == EXPECTED
    assert summary["labels"] == str(labels_path)
    assert summary["labels_sha256"] == prepare._file_sha256(str(labels_path))


def test_max_documents_caps_labels_too(tmp_path):
    text_path, labels_path = _write_corpus(tmp_path, [STORY_0, STORY_1], [SPANS_0, SPANS_1])
    config = _config(text_path, labels_path)
    config.corpus.max_documents = 1
    corpus_cfg, _ = prepare.configs_from(config)
    texts, spans, concepts, _ = prepare.load_or_generate(corpus_cfg, str(tmp_path / "w" / "corpus"))
    assert texts == [STORY_0] and spans == [tuple(labels.Span(*s) for s in SPANS_0)]
    assert list(concepts) == CONCEPTS  # the whole file's: "place" only occurs in story 1


def _many_concepts(n):
    return [[i, i + 1, f"c{i:02d}"] for i in range(n)]


# (labels file lines or None for "no file", message): each names the problem in one line.
BAD_LABELS = {
    "count_short": ([{"story": 0, "spans": []}], r"1 label lines for 2 stories"),
    "count_long": ([{"story": i, "spans": []} for i in range(3)], r"3 label lines for 2 stories"),
    "story_order": ([{"story": 1, "spans": []}, {"story": 0, "spans": []}],
                    r"labels.jsonl:1: `story` is 1, expected 0"),
    "story_repeated": ([{"story": 0, "spans": []}, {"story": 0, "spans": []}],
                       r"labels.jsonl:2: `story` is 0, expected 1"),
    "story_missing": ([{"spans": []}, {"story": 1, "spans": []}], r":1: `story` is null"),
    "start_eq_end": ([{"story": 0, "spans": [[3, 3, "a"]]}, {"story": 1, "spans": []}],
                     r":1: span 0 \[3, 3, \"a\"\] is empty or negative"),
    "start_gt_end": ([{"story": 0, "spans": [[5, 3, "a"]]}, {"story": 1, "spans": []}],
                     r"empty or negative; need 0 <= start < end"),
    "negative": ([{"story": 0, "spans": []}, {"story": 1, "spans": [[0, 1, "a"], [-1, 2, "a"]]}],
                 r"labels.jsonl:2: span 1 \[-1, 2, \"a\"\] is empty or negative"),
    "beyond_story": ([{"story": 0, "spans": []}, {"story": 1, "spans": [[50, 57, "a"]]}],
                     r":2: span \[50, 57, 'a'\] ends beyond story 1's 56 characters"),
    "float_offset": ([{"story": 0, "spans": [[0, 2.5, "a"]]}, {"story": 1, "spans": []}],
                     r":1: span 0 .* has a non-integer offset"),
    "string_offset": ([{"story": 0, "spans": [["0", 2, "a"]]}, {"story": 1, "spans": []}],
                      r"non-integer offset"),
    "bool_offset": ([{"story": 0, "spans": [[0, True, "a"]]}, {"story": 1, "spans": []}],
                    r"non-integer offset"),
    "no_concept": ([{"story": 0, "spans": [[0, 2]]}, {"story": 1, "spans": []}],
                   r":1: span 0 \[0, 2\] has no concept"),
    "not_a_span": ([{"story": 0, "spans": [{"start": 0}]}, {"story": 1, "spans": []}],
                   r":1: span 0 is \{\"start\": 0\}, not \[start, end, \"concept\"\]"),
    "empty_concept": ([{"story": 0, "spans": [[0, 2, ""]]}, {"story": 1, "spans": []}],
                      r":1: span 0 .* has a missing or empty concept"),
    "blank_concept": ([{"story": 0, "spans": [[0, 2, "  "]]}, {"story": 1, "spans": []}],
                      r"missing or empty concept"),
    "number_concept": ([{"story": 0, "spans": [[0, 2, 7]]}, {"story": 1, "spans": []}],
                       r"missing or empty concept"),
    "bad_json": (['{"story": 0, "spans": []}', '{"story": 1, "spans": [[0, 2, "a"]'],
                 r"labels.jsonl:2: not valid JSON"),
    "no_spans": ([{"story": 0, "spans": []}, {"story": 1}], r"labels.jsonl:2: no `spans` list"),
    "not_an_object": (["[]", "[]"], r"labels.jsonl:1: no `spans` list"),
    "too_many_concepts": ([{"story": 0, "spans": _many_concepts(33)}, {"story": 1, "spans": []}],
                          r"33 concepts \(c00, c01, c02, c03, \.\.\.\) exceed the 32"),
    "same_concept_overlap": (
        [{"story": 0, "spans": [[0, 4, "a"], [2, 6, "b"], [3, 9, "a"]]}, {"story": 1, "spans": []}],
        r":1: spans \[0, 4\] and \[3, 9\] of concept 'a' overlap; merge them"),
    "nested_duplicate": (
        [{"story": 0, "spans": []}, {"story": 1, "spans": [[4, 7, "x"], [4, 7, "x"]]}],
        r":2: spans \[4, 7\] and \[4, 7\] of concept 'x' overlap"),
    "no_file": (None, r"labels.jsonl: no such labels file"),
}


def _write_bad(tmp_path, lines):
    text_path, labels_path = _write_corpus(tmp_path, [STORY_0, STORY_1], [[], []])
    if lines is None:
        labels_path.unlink()
    else:
        text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
        labels_path.write_text(text, encoding="utf-8")
    return text_path, labels_path


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_labels_are_one_clear_line(tmp_path, case):
    lines, message = BAD_LABELS[case]
    text_path, labels_path = _write_bad(tmp_path, lines)
    workdir = tmp_path / "w"
    with pytest.raises(CorpusError, match=message) as info:
        prepare.prepare(_config(text_path, labels_path, eval_fraction=0.5), str(workdir))
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(labels_path)), text
    assert not workdir.exists()  # checked before anything is written


def test_touching_spans_of_one_concept_are_fine(tmp_path):
    lines = [{"story": 0, "spans": [[0, 4, "a"], [4, 9, "a"]]}, {"story": 1, "spans": []}]
    _, labels_path = _write_bad(tmp_path, lines)
    spans, concepts = labels.load_labels(labels_path, [STORY_0, STORY_1])
    assert concepts == ("a",) and len(spans[0]) == 2


def test_labels_need_a_real_corpus(tmp_path):
    config = tiny.get_config("smoke")
    config.corpus.labels = "labels.jsonl"
    with pytest.raises(ValueError, match=r"corpus.labels='labels.jsonl' needs corpus.path"):
        prepare.prepare(config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_prepare_binary_refuses_bad_labels_and_keeps_w(tmp_path):
    """A bad labels file: exit 2, one `error:` line, and W exactly as it was."""
    text_path, labels_path = _write_bad(
        tmp_path, [{"story": 0, "spans": [[0, 4, "a"]]}, {"story": 1, "spans": [[9, 3, "a"]]}])
    workdir = tmp_path / "w"
    (workdir / "data").mkdir(parents=True)
    (workdir / "data" / "keep.txt").write_text("earlier work")
    before = sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*"))
    out = subprocess.run(
        [sys.executable, "-m", "monosem_jax.corpus.main", f"--workdir={workdir}",
         f"--config={os.path.dirname(tiny.__file__)}/tiny.py:smoke",
         f"--config.corpus.path={text_path}", f"--config.corpus.labels={labels_path}"],
        capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [out.stderr.strip().splitlines()[-1]]
    assert f"{labels_path}:2: span 0 [9, 3, \"a\"] is empty or negative" in errors[0]
    assert sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*")) == before


def test_generated_corpus_fed_back_gives_identical_labels(tmp_path):
    """W/corpus/{stories.txt,labels.jsonl} of a generated corpus, read back as a real corpus."""
    config = tiny.get_config("smoke")
    config.corpus.num_stories = 120
    generated = tmp_path / "generated"
    summary = prepare.prepare(config, str(generated))
    first = json.loads((generated / "corpus" / "labels.jsonl").read_text().splitlines()[0])
    assert set(first) == {"story", "spans"} and first["story"] == 0
    copied = tmp_path / "mine"
    copied.mkdir()
    for name in ("stories.txt", "labels.jsonl"):
        (copied / name).write_bytes((generated / "corpus" / name).read_bytes())

    real = tmp_path / "real"
    again = prepare.prepare(_config(copied / "stories.txt", copied / "labels.jsonl"), str(real))
    assert again["concepts"] == summary["concepts"] == sorted(summary["concepts"])
    assert len(summary["concepts"]) == 12
    assert (dataset.load_meta(real / "data")["concepts"]
            == dataset.load_meta(generated / "data")["concepts"])
    for split in dataset.SPLITS:
        for kind in ("labels", "tokens", "doc_starts"):
            name = f"{split}.{kind}.npy"
            assert (real / "data" / name).read_bytes() == (generated / "data" / name).read_bytes()


# A user's own concepts (none of the generator's names), found by patterns in the text.
USER_CONCEPTS = {
    "article": re.compile(r"\b(?:[Tt]he|[Aa]n?)\b"),
    "capitalised": re.compile(r"\b[A-Z]\w*"),
    "punctuation": re.compile(r"[.,!?]"),
}


def test_eval_browser_report_on_a_labelled_real_corpus(sae_workdir, copy_workdir, tmp_path):
    """The smoke run's stories re-read as a real corpus with a user's labels: the corpus stage
    rebuilds W/data (same texts, so the same tokenizer, LM and SAE), then eval, the browser and
    the report run on the user's concepts."""
    workdir = copy_workdir(sae_workdir)
    stories = loaders.load_texts(os.path.join(workdir, "corpus", "stories.txt"))
    spans = [[[m.start(), m.end(), name] for name, pattern in USER_CONCEPTS.items()
              for m in pattern.finditer(story)] for story in stories]
    mine = tmp_path / "mine"
    mine.mkdir()
    text_path, labels_path = _write_corpus(mine, stories, spans)
    old_hash = dataset.load_meta(os.path.join(workdir, "data"))["tokenizer_hash"]
    os.remove(os.path.join(workdir, "corpus", "summary.json"))
    config = _config(text_path, labels_path)
    summary = prepare.prepare(config, workdir)
    assert summary["tokenizer_hash"] == old_hash and summary["concepts"] == sorted(USER_CONCEPTS)

    result = evaluate.evaluate(config.eval, workdir)
    assert result["concept_table"] is not None
    assert sorted(r["concept"] for r in result["concept_table"]) == sorted(USER_CONCEPTS)
    assert set(result["concept_f1"]) == set(USER_CONCEPTS)
    assert all(0 < r["base_rate"] < 1 and 0 <= r["f1"] <= 1 for r in result["concept_table"])
    browser_write.browse(config.browse, workdir)
    index_js = (tmp_path / "w" / "browser" / "features_index.js").read_text()
    assert any(f'"{name}"' in index_js for name in USER_CONCEPTS)  # features named by them
    report.write_report(config.eval, workdir)
    assert "| capitalised |" in (tmp_path / "w" / "report.md").read_text()
