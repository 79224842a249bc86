"""Tests for monosem_jax.corpus.loaders: formats, normalisation, and error messages."""

import json

import pytest

from monosem_jax.corpus.loaders import CorpusError, load_texts


def _write(path, text: str):
    """Write UTF-8 text byte-for-byte (no newline translation)."""
    path.write_bytes(text.encode("utf-8"))
    return path


def test_tinystories_format(tmp_path):
    text = (
        "First story.\nLine two.\n<|endoftext|>\n"
        "  Second story.  \n  <|endoftext|>  \n\n<|endoftext|>\n"
    )
    path = _write(tmp_path / "stories.txt", text)
    expected = ["First story.\nLine two.", "Second story."]
    assert load_texts(path, "tinystories") == expected
    assert load_texts(path) == expected


def test_eot_inside_a_line_is_not_a_separator(tmp_path):
    path = _write(tmp_path / "s.txt", "a <|endoftext|> b\n<|endoftext|>\nc\n")
    assert load_texts(path) == ["a <|endoftext|> b", "c"]


def test_plain_file_without_separators_splits_on_blank_lines(tmp_path):
    path = _write(tmp_path / "plain.txt", "Para one\nstill one.\n\nPara two.\n \n\n\nPara three.\n")
    assert load_texts(path) == ["Para one\nstill one.", "Para two.", "Para three."]
    # Explicit tinystories format keeps a separator-free file whole.
    assert load_texts(path, "tinystories") == [
        "Para one\nstill one.\n\nPara two.\n \n\n\nPara three."
    ]


def test_jsonl_format(tmp_path):
    lines = [json.dumps({"text": "One.", "id": 1}), "", json.dumps({"text": " Two “quoted”. "})]
    path = _write(tmp_path / "c.jsonl", "\n".join(lines) + "\n")
    assert load_texts(path) == ["One.", "Two “quoted”."]
    json_path = _write(tmp_path / "c.json", "\n".join(lines))
    assert load_texts(json_path) == ["One.", "Two “quoted”."]


def test_txt_dir_format(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    _write(root / "b.txt", "  Doc B.\n")
    _write(root / "a.txt", "Doc A.")
    _write(root / "sub" / "c.txt", "C1\n<|endoftext|>\nC2\n<|endoftext|>\n")
    _write(root / "empty.txt", "  \n")
    _write(root / "notes.md", "ignored")
    assert load_texts(root) == ["Doc A.", "Doc B.", "C1", "C2"]
    assert load_texts(root, "txt_dir") == ["Doc A.", "Doc B.", "C1", "C2"]


def test_crlf_and_nfc_normalised(tmp_path):
    decomposed = "cafe\u0301"  # "e" + combining acute accent
    path = _write(tmp_path / "s.txt", f"Line one\r\n{decomposed}\r\n<|endoftext|>\r\nTwo\r\n")
    docs = load_texts(path)
    assert docs == ["Line one\ncaf\u00e9", "Two"]
    jpath = _write(tmp_path / "s.jsonl", json.dumps({"text": "a\r\nb " + decomposed}) + "\r\n")
    assert load_texts(jpath) == ["a\nb caf\u00e9"]


def test_utf8_bom_is_dropped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfHello\n<|endoftext|>\n")
    assert load_texts(path) == ["Hello"]


def test_missing_path(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(CorpusError, match="nope.txt"):
        load_texts(path)


@pytest.mark.parametrize("content", ["", "  \n\n", "<|endoftext|>\n<|endoftext|>\n"])
def test_empty_file(tmp_path, content):
    path = _write(tmp_path / "empty.txt", content)
    with pytest.raises(CorpusError, match="empty.txt.*no documents"):
        load_texts(path)


def test_empty_dir(tmp_path):
    with pytest.raises(CorpusError, match=str(tmp_path)):
        load_texts(tmp_path)


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"Hello caf\xe9\n")
    with pytest.raises(CorpusError, match=r"latin1.txt.*byte offset 9"):
        load_texts(path)


def test_bad_jsonl_line(tmp_path):
    path = _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n\n{not json}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl: line 3 is not valid JSON"):
        load_texts(path)


@pytest.mark.parametrize("line", ['{"txt": "x"}', '{"text": 3}', '["text"]'])
def test_jsonl_line_without_text(tmp_path, line):
    path = _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n' + line + "\n")
    with pytest.raises(CorpusError, match=r"bad.jsonl: line 2 has no string `text`"):
        load_texts(path)


def test_unknown_format(tmp_path):
    path = _write(tmp_path / "s.txt", "x")
    with pytest.raises(CorpusError, match=r"s.txt.*unknown corpus format 'csv'"):
        load_texts(path, "csv")


def test_format_needs_matching_path_kind(tmp_path):
    with pytest.raises(CorpusError, match="needs a file"):
        load_texts(tmp_path, "jsonl")
    path = _write(tmp_path / "s.txt", "x")
    with pytest.raises(CorpusError, match="needs a folder"):
        load_texts(path, "txt_dir")
