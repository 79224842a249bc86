"""The synthetic concept corpus: determinism, vocabulary, span alignment, file round trip."""

import collections
import math
import re
import statistics

import pytest

from monosem_jax.corpus import generator as gen
from monosem_jax.corpus import lexicon as en
from monosem_jax.corpus import lexicon_fr as fr

WORD = re.compile(r"[^\W\d_]+")
TOPIC_CONCEPTS = tuple(c for c in gen.CONCEPTS if c.startswith("topic_"))
NAMES = frozenset(en.GIRL_NAMES + en.BOY_NAMES + fr.GIRL_NAMES + fr.BOY_NAMES)
NUMBER_WORDS = frozenset(en.NUMBER_WORDS + fr.NUMBER_WORDS)
EMOTION_WORDS = en.EMOTION_WORDS | fr.EMOTION_WORDS
NEGATION_WORDS = en.NEGATION_WORDS | fr.NEGATION_WORDS


@pytest.fixture(scope="module")
def corpus():
    return gen.generate_stories(20_000, seed=0)


def _is_french(story):
    return any(s.concept == "french" for s in story.spans)


def _topic_vocab(lexicon, french):
    """Every word form of every topic, per topic."""
    vocab = {}
    for topic, lex in lexicon.TOPICS.items():
        forms = [w for noun in lex["nouns"] for w in noun[:2]]
        forms += [w for verb in lex["verbs"] for w in verb]
        forms += [w for adj in lex["adjs"] for w in adj] if french else list(lex["adjs"])
        if french:
            forms += [v[2][:-1] + "ent" for v in lex["verbs"]]
        else:
            forms += [gen.third_person(v[0]) for v in lex["verbs"]]
        vocab[topic] = {w for form in forms for w in WORD.findall(form.lower())}
    return vocab


def test_concept_names():
    assert gen.CONCEPTS == (
        "topic_ocean", "topic_forest", "topic_space", "topic_kitchen", "topic_farm",
        "topic_school", "dialogue", "name", "number", "emotion", "negation", "french")


def test_same_seed_same_stories_other_seed_others():
    a = gen.generate_stories(300, seed=7)
    b = gen.generate_stories(300, seed=7)
    assert [s.text for s in a] == [s.text for s in b]
    assert [s.spans for s in a] == [s.spans for s in b]
    assert [s.text for s in gen.generate_stories(300, seed=8)] != [s.text for s in a]
    assert gen.generate_stories(300, seed=7, french_fraction=0.5) != a


def test_vocabulary_concepts_and_french_share(corpus):
    assert len(gen.distinct_words(s.text for s in corpus)) >= 1500
    seen = {span.concept for story in corpus for span in story.spans}
    assert seen == set(gen.CONCEPTS)
    french = [s for s in corpus if _is_french(s)]
    assert len(french) / len(corpus) >= 0.10
    for story in french:
        assert gen.Span(0, len(story.text), "french") in story.spans


def test_distinct_words_counts_letter_runs():
    assert gen.distinct_words(["Lily swam, SWAM 3 times!", "l'île d'été"]) == {
        "lily", "swam", "times", "l", "île", "d", "été"}


def test_text_format(corpus):
    for story in corpus:
        text = story.text
        assert text == text.strip() and "\r" not in text and "\n\n" not in text
        assert "<|endoftext|>" not in text


def test_story_shape(corpus):
    english = [s for s in corpus if not _is_french(s)]
    words = [len(WORD.findall(s.text)) for s in english]
    assert 60 <= statistics.median(words) <= 150
    assert statistics.quantiles(words, n=20)[0] >= 50  # 5th percentile
    with_dialogue = sum(any(x.concept == "dialogue" for x in s.spans) for s in corpus)
    assert with_dialogue / len(corpus) >= 0.8
    counting = sum(bool(re.search(r"\b(one|un), (two|deux), (three|trois)\b", s.text))
                   for s in corpus)
    assert counting / len(corpus) >= 0.2
    for concept in gen.CONCEPTS[:6]:  # the topics are balanced
        share = sum(any(x.concept == concept for x in s.spans) for s in corpus) / len(corpus)
        assert 0.13 <= share <= 0.2, concept


def test_spans_match_their_text(corpus):
    for story in corpus:
        text, spans = story.text, story.spans
        assert list(spans) == sorted(set(spans), key=lambda s: (s.start, s.end, s.concept))
        topics = {s.concept for s in spans if s.concept in TOPIC_CONCEPTS}
        assert len(topics) <= 1  # one topic per story, labelled on its words
        for span in spans:
            assert 0 <= span.start < span.end <= len(text) and span.concept in gen.CONCEPTS
            piece = text[span.start:span.end]
            if span.concept in ("name", "number", "emotion", "negation"):
                before = text[span.start - 1] if span.start else " "
                after = text[span.end] if span.end < len(text) else " "
                assert not before.isalnum(), (piece, text)
                assert not after.isalnum() or piece.endswith("'"), (piece, text)  # "n'avait"
            if span.concept == "name":
                assert piece in NAMES and piece[0].isupper()
            elif span.concept == "number":
                assert piece.isdigit() or piece.lower() in NUMBER_WORDS
            elif span.concept == "emotion":
                assert piece.lower() in EMOTION_WORDS
            elif span.concept == "negation":
                assert piece.lower() in NEGATION_WORDS
            elif span.concept == "dialogue":
                assert text[span.start - 1] == '"' and text[span.end] == '"'
                assert '"' not in piece
        quoted = sum(s.concept == "dialogue" for s in spans)
        assert text.count('"') == 2 * quoted


def test_every_concept_word_is_labelled(corpus):
    """The scan is exhaustive: each emotion / negation word occurrence carries its span."""
    for story in corpus[:2000]:
        labelled = {(s.start, s.end) for s in story.spans}
        pattern = gen._FR_WORDS if _is_french(story) else gen._EN_WORDS
        for m in pattern.finditer(story.text):
            word = m.group().lower()
            if word in EMOTION_WORDS | NEGATION_WORDS or m.group().isdigit():
                assert (m.start(), m.end()) in labelled, (word, story.text)


def test_topic_words_stay_in_their_topic(corpus):
    for lexicon, french in ((en, False), (fr, True)):
        vocab = _topic_vocab(lexicon, french)
        topics = list(vocab)
        for i, a in enumerate(topics):
            for b in topics[i + 1:]:
                assert not vocab[a] & vocab[b], (a, b, vocab[a] & vocab[b])
        everything = set().union(*vocab.values())
        assert not everything & {n.lower() for n in NAMES}
        assert not everything & (lexicon.EMOTION_WORDS | lexicon.NEGATION_WORDS)
        assert not everything & set(lexicon.NUMBER_WORDS)
    vocabs = {False: _topic_vocab(en, False), True: _topic_vocab(fr, True)}
    for story in corpus[:4000]:
        french = _is_french(story)
        topic_spans = [s for s in story.spans if s.concept in TOPIC_CONCEPTS]
        (concept,) = {s.concept for s in topic_spans}
        topic = concept[len("topic_"):]
        words = set(WORD.findall(story.text.lower()))
        for other, vocab in vocabs[french].items():
            if other != topic:
                assert not words & vocab, (other, words & vocab, story.text)
        # Each topic span is whole words of its topic, and blanking the spans leaves none.
        text = story.text
        for span in topic_spans:
            piece = text[span.start:span.end].lower()
            assert set(WORD.findall(piece)) <= vocabs[french][topic], (piece, story.text)
            text = text[:span.start] + " " * (span.end - span.start) + text[span.end:]
        assert not set(WORD.findall(text.lower())) & vocabs[french][topic], story.text


def test_topic_vocabulary_covers_the_labelled_words(corpus):
    vocab = gen.topic_vocabulary()
    per_language = {False: _topic_vocab(en, False), True: _topic_vocab(fr, True)}
    for topic in gen.TOPICS:
        assert vocab[topic] == per_language[False][topic] | per_language[True][topic]
    for story in corpus[:2000]:
        for span in story.spans:
            if span.concept in TOPIC_CONCEPTS:
                words = WORD.findall(story.text[span.start:span.end].lower())
                assert set(words) <= vocab[span.concept[len("topic_"):]], story.text


def test_names_are_only_names(corpus):
    lower_names = {n.lower() for n in NAMES}
    for story in corpus[:4000]:
        text = story.text
        for span in story.spans:
            if span.concept == "name":
                text = text[:span.start] + " " * (span.end - span.start) + text[span.end:]
        assert not set(WORD.findall(text.lower())) & lower_names, story.text


def test_french_stories_are_labelled_too(corpus):
    french = [s for s in corpus if _is_french(s)]
    counts = collections.Counter(x.concept for s in french for x in s.spans)
    for concept in gen.CONCEPTS:
        assert counts[concept] > 0, concept
    assert any("Il était une fois" in s.text for s in french)


def test_fraction_extremes():
    assert not any(_is_french(s) for s in gen.generate_stories(50, 1, french_fraction=0.0))
    assert all(_is_french(s) for s in gen.generate_stories(50, 1, french_fraction=1.0))
    assert sum(_is_french(s) for s in gen.generate_stories(200, 1, french_fraction=0.25)) == 50


def test_write_and_read_back(tmp_path):
    stories = gen.generate_stories(60, seed=3, french_fraction=0.3)
    text_path, labels_path = tmp_path / "stories.txt", tmp_path / "labels.jsonl"
    gen.write_labelled_corpus(stories, text_path, labels_path)
    raw = text_path.read_bytes().decode("utf-8")
    assert raw.endswith("\n<|endoftext|>\n") and "\r" not in raw
    docs, current = [], []
    for line in raw.split("\n"):
        if line == "<|endoftext|>":
            docs.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    assert docs == [s.text for s in stories]
    assert gen.read_labels(labels_path) == [s.spans for s in stories]


def test_read_labels_rejects_garbage(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"story": 0, "spans": [[0, 3, "name"]]}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match="labels.jsonl:2"):
        gen.read_labels(path)


@pytest.mark.parametrize("num_stories", [0, -3, 2.5, True])
def test_bad_num_stories(num_stories):
    with pytest.raises(ValueError, match=r"num_stories=.*positive integer"):
        gen.generate_stories(num_stories, seed=0)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, math.nan, "0.2"])
def test_bad_french_fraction(fraction):
    with pytest.raises(ValueError, match=r"french_fraction=.*\[0, 1\]"):
        gen.generate_stories(10, seed=0, french_fraction=fraction)
