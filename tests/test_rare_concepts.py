"""Rare planted concepts: invented characters at log-spaced rates, inserted between sentences
of the English stories, labelled exactly, the rest of each story untouched."""

import collections
import math
import re

import numpy as np
import pytest

from monosem_jax.configs.pipeline import tiny
from monosem_jax.corpus import dataset, generator, prepare, rare_concepts
from monosem_jax.corpus import lexicon as en

RARE = rare_concepts.make_concepts(6, 1e-2, 1e-4)


class _Always:
    """A stand-in random.Random whose choice is always item i (every template in turn)."""

    def __init__(self, i):
        self.i = i

    def choice(self, seq):
        return seq[self.i]


def test_concepts_are_fixed_invented_names_at_log_spaced_rates():
    assert rare_concepts.make_concepts(6, 1e-2, 1e-4) == RARE  # the same names in every corpus
    names = [c.name for c in RARE]
    assert len(set(names)) == len(names)
    assert not {n.lower() for n in names} & {w.lower() for w in en.GIRL_NAMES + en.BOY_NAMES}
    assert [c.concept for c in RARE] == [f"rare_{i:02d}" for i in range(6)]
    rates = np.array([c.rate for c in RARE])
    np.testing.assert_allclose(rates[[0, -1]], [1e-2, 1e-4])
    np.testing.assert_allclose(rates[1:] / rates[:-1], 10 ** (-2 / 5))
    with pytest.raises(ValueError, match="rare_concepts=17"):
        rare_concepts.make_concepts(17, 1e-2, 1e-4)


def test_planted_sentences_leave_the_stories_and_their_labels_as_they_were():
    base = generator.generate_stories(300, 3)
    planted = generator.generate_stories(300, 3, rare=RARE)
    assert planted == generator.generate_stories(300, 3, rare=RARE)  # pure
    sentences = {rare_concepts._sentence(_Always(i), c)[0] + " "
                 for c in RARE for i in range(len(rare_concepts._TEMPLATES))}
    changed = 0
    for b, p in zip(base, planted, strict=True):
        old = [(b.text[s.start:s.end], s.concept) for s in b.spans]
        kept = [(p.text[s.start:s.end], s.concept) for s in p.spans
                if not s.concept.startswith("rare_")]
        assert kept == old
        for s in p.spans:
            if s.concept.startswith("rare_"):
                concept = RARE[int(s.concept[5:])]
                assert p.text[s.start:s.end] == concept.name
                assert p.text[s.end:].startswith((" the " + concept.role, ", the "))
        changed += p.text != b.text
        unplanted = p.text
        for sentence in sentences:
            unplanted = unplanted.replace(sentence, "")
        assert unplanted == b.text
    assert changed > 100


def test_the_measured_rates_follow_the_plan_over_the_whole_corpus():
    stories = generator.generate_stories(3000, 0, rare=RARE[:4])
    words = sum(len(re.findall(r"[^\W\d_]+", s.text)) for s in stories)
    counts = collections.Counter(s.concept for st in stories for s in st.spans)
    for concept in RARE[:4]:
        # Planted per base word; the planted sentences add ~4% more words.
        expected = concept.rate * words / 1.04
        assert abs(counts[concept.concept] - expected) < 4 * math.sqrt(expected) + 0.05 * expected
    # Only English stories: a French one never has a character.
    french = [s for s in stories if re.search(r"\b(était|une|avec)\b", s.text)]
    assert french and not any(sp.concept.startswith("rare_") for s in french for sp in s.spans)


def test_no_planted_word_is_one_a_concept_scan_labels():
    planted_words = set()
    for template in rare_concepts._TEMPLATES:
        planted_words.update(re.findall(r"[a-z]+", template.lower()))
    for role, thing in rare_concepts._ROLES:
        planted_words.update(re.findall(r"[a-z]+", f"{role} {thing} a an"))
    scanned = set(en.EMOTION_WORDS) | set(en.NEGATION_WORDS) | set(en.NUMBER_WORDS)
    assert not planted_words & scanned - {"name"}


def test_prepare_plants_them_and_records_what_they_are(tmp_path):
    config = tiny.get_config("smoke")
    config.corpus.rare_concepts = 3
    config.corpus.rare_min_rate = 1e-3
    summary = prepare.prepare(config, str(tmp_path))
    assert [c["concept"] for c in summary["rare_concepts"]] == ["rare_00", "rare_01", "rare_02"]
    assert {"rare_00", "rare_01", "rare_02"} <= set(summary["concepts"])
    meta = dataset.load_meta(tmp_path / "data")
    train = dataset.load_split(tmp_path / "data", "train")
    bit = 1 << meta["concepts"].index("rare_00")
    assert ((train.labels_N & bit) != 0).mean() > 1e-3  # names are several BPE pieces


@pytest.mark.parametrize("override, says", [
    ({"rare_concepts": 17}, "corpus.rare_concepts=17"),
    ({"rare_concepts": 2, "path": "x.txt"}, "a real corpus"),
    ({"rare_min_rate": 0.0}, "corpus.rare_min_rate=0.0"),
    ({"rare_max_rate": 1e-6}, "corpus.rare_max_rate=1e-06"),
])
def test_bad_rare_settings_are_one_clear_error(override, says):
    config = tiny.get_config("smoke")
    config.corpus.update(override)
    with pytest.raises(ValueError, match=re.escape(says)):
        prepare.configs_from(config)
