"""The embedded default corpus: seeded TinyStories-like stories with planted concept labels.

Stories come from sentence templates (monosem_jax.corpus.lexicon / lexicon_fr) whose slots are
filled from per-topic word lists. While a story is assembled, every filled slot knows what it
is (a name, a topic word, a counted number), so labels are exact character spans; emotion,
negation and number words are found by a whole-word scan of the finished text, and dialogue is
the text strictly inside each pair of double quotes.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
import random
import re
from collections.abc import Callable, Iterable, Sequence

from monosem_jax.corpus import labels, rare_concepts
from monosem_jax.corpus import lexicon as en
from monosem_jax.corpus import lexicon_fr as fr
from monosem_jax.corpus.labels import Span

TOPICS = ("ocean", "forest", "space", "kitchen", "farm", "school")
CONCEPTS = tuple(f"topic_{t}" for t in TOPICS) + (
    "dialogue", "name", "number", "emotion", "negation", "french")
EOT_LINE = "<|endoftext|>"


@dataclasses.dataclass(frozen=True)
class Story:
    """One story and its concept spans, sorted by (start, end, concept)."""

    text: str
    spans: tuple[Span, ...]


# ----------------------------------------------------------------------------- templates

_SLOT_RE = re.compile(r"\{(@?\w+)\}")  # re.split keeps the slot names at odd indices
_Segs = tuple[tuple[str, "str | None"], ...]  # (text, tag); tag: None | name | topic | number


def _compile(template: str) -> tuple[tuple[bool, str], ...]:
    """Split a template into (is_slot, text) parts."""
    return tuple((i % 2 == 1, part) for i, part in enumerate(_SLOT_RE.split(template)) if part)


def _compile_sections(sections: dict) -> dict:
    return {name: tuple(_compile(t) for t in temps) for name, temps in sections.items()}


_EN_SECTIONS = _compile_sections(en.SECTIONS)
_FR_SECTIONS = _compile_sections(fr.SECTIONS)


def _split_nouns(topics: dict, places: bool) -> dict[str, tuple]:
    """Per topic, the nouns that are places, or the others (what a hero sees, holds, counts)."""
    return {t: tuple(n for n in d["nouns"] if (n[0] in d["places"]) == places)
            for t, d in topics.items()}


_EN_THINGS, _EN_PLACES = _split_nouns(en.TOPICS, False), _split_nouns(en.TOPICS, True)
_FR_THINGS, _FR_PLACES = _split_nouns(fr.TOPICS, False), _split_nouns(fr.TOPICS, True)


def _concept_map(**groups: Iterable[str]) -> dict[str, str]:
    return {w: concept for concept, words in groups.items() for w in words}


# Whole words as the scan sees them: English keeps contractions whole ("didn't"), French splits
# after an elided apostrophe ("n'", "avait"); digit runs are numbers.
_EN_WORDS = re.compile(r"(?<![\w'])[^\W\d_]+(?:'[^\W\d_]+)?|\d+")
_FR_WORDS = re.compile(r"(?<!\w)[^\W\d_]+'?|\d+")
_EN_CONCEPT_OF = _concept_map(emotion=en.EMOTION_WORDS, negation=en.NEGATION_WORDS,
                              number=en.NUMBER_WORDS)
_FR_CONCEPT_OF = _concept_map(emotion=fr.EMOTION_WORDS, negation=fr.NEGATION_WORDS,
                              number=fr.SCANNED_NUMBER_WORDS)
_QUOTED_RE = re.compile(r'"([^"\n]+)"')
_WORD_RE = re.compile(r"[^\W\d_]+")


class _Builder:
    """Accumulates text segments and the tagged spans among them."""

    __slots__ = ("parts", "pos", "tags")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.tags: list[tuple[int, int, str]] = []

    def add(self, text: str, tag: str | None = None) -> None:
        if tag is not None:
            self.tags.append((self.pos, self.pos + len(text), tag))
        self.parts.append(text)
        self.pos += len(text)


def _choose(rng: random.Random, section: str, sections: dict, used: set) -> tuple:
    """A template of `section` not yet used in this story (when one is left)."""
    temps = sections[section]
    for _ in range(len(temps) + 2):
        i = int(len(temps) * rng.random())
        if (section, i) not in used:
            break
    used.add((section, i))
    return temps[i]


def _render(b: _Builder, parts, sections, slots: dict[str, _Segs], fresh: dict,
            rng: random.Random, ctx: dict) -> None:
    for is_slot, s in parts:
        if not is_slot:
            b.add(s)
        elif s[0] == "@":
            template = _choose(rng, s[1:], sections, ctx["used"])
            _render(b, template, sections, slots, fresh, rng, ctx)
        else:
            segs = slots.get(s)
            if segs is None:
                segs = fresh[s](rng, ctx)
            for text, tag in segs:
                b.add(text, tag)


def _assemble(rng: random.Random, plan, sections, slots, fresh, ctx) -> _Builder:
    b = _Builder()
    ctx["used"] = set()
    for p_index, paragraph in enumerate(plan):
        if p_index:
            b.add("\n")
        done: list[str] = []
        for section, prob in paragraph:
            if (section == "fix" and "problem" not in done) or rng.random() >= prob:
                continue
            if done:
                b.add(" ")
            done.append(section)
            template = _choose(rng, section, sections, ctx["used"])
            _render(b, template, sections, slots, fresh, rng, ctx)
    return b


def _pick(rng: random.Random, seq: Sequence, skew: float = 1.0):
    """An element of seq; skew > 1 favours the front (a Zipf-like head of common words)."""
    return seq[int(len(seq) * rng.random() ** skew)]


def _finish(b: _Builder, scan: re.Pattern, concept_of: dict[str, str], topic: str,
            french: bool) -> Story:
    text = "".join(b.parts)
    # A topic concept is its topic's words (each filled topic slot), not the whole story after
    # the first one: linear probes on the default LM's residual stream detect topic words but
    # not "inside an ocean story" (F1 ~0.25 at every layer; BUILD.md, concept labels).
    spans = {(s, e, f"topic_{topic}" if tag == "topic" else tag) for s, e, tag in b.tags}
    for m in scan.finditer(text):
        word = m.group()
        concept = "number" if word.isdigit() else concept_of.get(word.lower())
        if concept is not None:
            spans.add((m.start(), m.end(), concept))
    for m in _QUOTED_RE.finditer(text):
        spans.add((m.start(1), m.end(1), "dialogue"))
    if french:
        spans.add((0, len(text), "french"))
    return Story(text, tuple(Span(s, e, c) for s, e, c in sorted(spans)))


# ----------------------------------------------------------------------------- English


def _a(word: str) -> str:
    return "an " if word[0] in "aeiou" else "a "


def third_person(verb: str) -> str:
    """English present tense, third person singular: swim -> swims, fly -> flies."""
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _number(rng: random.Random, countable: Sequence[str]) -> str:
    return str(2 + int(rng.random() * 9)) if rng.random() < 0.08 else _pick(rng, countable, 1.3)


def _counting(rng: random.Random, ctx: dict, words: Sequence[str]) -> _Segs:
    n = 3 + int(rng.random() * 4)
    ctx["last"] = ((words[n - 1], "number"),)
    segs: list[tuple[str, str | None]] = []
    for i in range(n):
        if i:
            segs.append((", ", None))
        segs.append((words[i], "number"))
    return tuple(segs)


def _with_article(word: str) -> _Segs:
    return ((_a(word) + word, None),)


_EN_FRESH: dict[str, Callable[[random.Random, dict], _Segs]] = {
    "gadj": lambda rng, ctx: ((_pick(rng, en.GENERAL_ADJS, 1.3), None),),
    "a_gadj": lambda rng, ctx: _with_article(_pick(rng, en.GENERAL_ADJS, 1.3)),
    "rnoun": lambda rng, ctx: ((_pick(rng, ctx["nouns"], 1.5)[0], "topic"),),
    "rnouns": lambda rng, ctx: ((_pick(rng, ctx["nouns"], 1.5)[1], "topic"),),
    "rplaces": lambda rng, ctx: ((_pick(rng, ctx["places"])[1], "topic"),),
    "num": lambda rng, ctx: ((_number(rng, en.COUNTABLE), "number"),),
    "age": lambda rng, ctx: ((_number(rng, en.COUNTABLE[1:7]), "number"),),
    "count": lambda rng, ctx: _counting(rng, ctx, en.NUMBER_WORDS),
    "last": lambda rng, ctx: ctx["last"],
    "emo_adv_pos": lambda rng, ctx: ((_pick(rng, en.EMO_ADV_POS), None),),
    "emo_adv_neg": lambda rng, ctx: ((_pick(rng, en.EMO_ADV_NEG), None),),
    "emo_noun_pos": lambda rng, ctx: ((_pick(rng, en.EMO_NOUNS_POS), None),),
    "emo_noun_neg": lambda rng, ctx: ((_pick(rng, en.EMO_NOUNS_NEG), None),),
}


def _cast(rng: random.Random, lexicon) -> tuple[str, str, str, str, str]:
    """(hero's kind word, hero's gender, hero's name, friend's gender, friend's name)."""
    kind, gender = _pick(rng, lexicon.KINDS)
    genders = [gender or ("f" if rng.random() < 0.5 else "m"), "f" if rng.random() < 0.5 else "m"]
    names = [_pick(rng, lexicon.GIRL_NAMES if g == "f" else lexicon.BOY_NAMES, 2.0)
             for g in genders]
    while names[1] == names[0]:
        names[1] = _pick(rng, lexicon.GIRL_NAMES if genders[1] == "f" else lexicon.BOY_NAMES, 2.0)
    return kind, genders[0], names[0], genders[1], names[1]


def _english_story(rng: random.Random) -> Story:
    topic = TOPICS[int(rng.random() * len(TOPICS))]
    lex = en.TOPICS[topic]
    nouns, verbs, adjs = _EN_THINGS[topic], lex["verbs"], lex["adjs"]
    kind, gender, hero, _, friend = _cast(rng, en)
    noun, noun2 = _pick(rng, nouns, 1.5), _pick(rng, nouns, 1.5)
    adj, adj2 = _pick(rng, adjs, 1.3), _pick(rng, adjs, 1.3)
    verb, verb2 = _pick(rng, verbs, 1.3), _pick(rng, verbs, 1.3)
    p, o, ps = ("she", "her", "her") if gender == "f" else ("he", "him", "his")
    name_seg, friend_seg = ((hero, "name"),), ((friend, "name"),)
    slots: dict[str, _Segs] = {
        "hero": name_seg, "Hero": name_seg, "friend": friend_seg, "Friend": friend_seg,
        "p": ((p, None),), "P": ((p.capitalize(), None),), "o": ((o, None),),
        "ps": ((ps, None),), "Ps": ((ps.capitalize(), None),), "kind": ((kind, None),),
        "fkind": ((_pick(rng, en.FRIEND_KINDS), None),),
        "family": ((_pick(rng, en.FAMILY, 1.5), None),),
        "place": ((_pick(rng, lex["places"], 1.5), "topic"),),
        "noun": ((noun[0], "topic"),), "nouns": ((noun[1], "topic"),),
        "noun2": ((noun2[0], "topic"),), "a_noun2": ((_a(noun2[0]), None), (noun2[0], "topic")),
        "adj": ((adj, "topic"),), "adj2": ((adj2, "topic"),),
        "a_adj": ((_a(adj), None), (adj, "topic")), "a_adj2": ((_a(adj2), None), (adj2, "topic")),
        "verb": ((verb[0], "topic"),), "verbed": ((verb[1], "topic"),),
        "verbing": ((verb[2], "topic"),), "verbed2": ((verb2[1], "topic"),),
        "verbs": ((third_person(verb[0]), "topic"),),
        "emo_pos": ((_pick(rng, en.EMO_POS, 1.3), None),),
        "emo_neg": ((_pick(rng, en.EMO_NEG + en.EMO_OTHER, 1.3), None),),
        "moral": ((_pick(rng, en.MORALS), None),),
    }
    ctx = {"nouns": nouns, "places": _EN_PLACES[topic]}
    b = _assemble(rng, en.PLAN, _EN_SECTIONS, slots, _EN_FRESH, ctx)
    return _finish(b, _EN_WORDS, _EN_CONCEPT_OF, topic, french=False)


# ----------------------------------------------------------------------------- French

_FR_VOWELS = frozenset("aeiouyàâäéèêëîïôöùûüœ")


def _fr_noun_segs(word: str, gender: str, masc: str, fem: str, elided: str) -> _Segs:
    """The noun after its article, elided before a vowel: "le phare", "la mer", "l'île"."""
    article = elided if word[0] in _FR_VOWELS else masc if gender == "m" else fem
    return ((article, None), (word, "topic"))


def _fr_adj(adjs: Sequence, gender: str, plural: bool = False) -> _Segs:
    return ((adjs[2 * plural + (gender == "f")], "topic"),)


def _fr_nouns_adj(rng: random.Random, ctx: dict) -> _Segs:
    """A plural noun and an agreeing adjective: "coquillages salés"."""
    noun = _pick(rng, ctx["nouns"], 1.5)
    return ((noun[1], "topic"), (" ", None)) + _fr_adj(_pick(rng, ctx["adjs"]), noun[2], True)


def _fr_de_places(rng: random.Random, ctx: dict) -> _Segs:
    plural = _pick(rng, ctx["places"])[1]
    return (("d'" if plural[0] in _FR_VOWELS else "de ", None), (plural, "topic"))


_FR_FRESH: dict[str, Callable[[random.Random, dict], _Segs]] = {
    "rnouns": lambda rng, ctx: ((_pick(rng, ctx["nouns"], 1.5)[1], "topic"),),
    "rnouns_adj": _fr_nouns_adj,
    "de_rplaces": _fr_de_places,
    "num": lambda rng, ctx: ((_number(rng, fr.COUNTABLE), "number"),),
    "age": lambda rng, ctx: ((_number(rng, fr.COUNTABLE[1:7]), "number"),),
    "count": lambda rng, ctx: _counting(rng, ctx, fr.NUMBER_WORDS),
    "last": lambda rng, ctx: ctx["last"],
    "emo_adv": lambda rng, ctx: ((_pick(rng, fr.EMO_ADVERBS), None),),
}


def _french_story(rng: random.Random) -> Story:
    topic = TOPICS[int(rng.random() * len(TOPICS))]
    lex = fr.TOPICS[topic]
    nouns, verbs, adjs = _FR_THINGS[topic], lex["verbs"], lex["adjs"]
    gender_of = {n[0]: n[2] for n in lex["nouns"]}
    kind, gender, hero, fgender, friend = _cast(rng, fr)
    place = _pick(rng, lex["places"], 1.5)
    pg = gender_of[place]
    noun, noun2 = _pick(rng, nouns, 1.5), _pick(rng, nouns, 1.5)
    verb = _pick(rng, verbs, 1.3)
    adj, adj2 = _pick(rng, adjs, 1.3), _pick(rng, adjs, 1.3)
    gadj = _pick(rng, fr.GENERAL_ADJS, 1.3)
    family, fam_gender = _pick(rng, fr.FAMILY, 1.5)
    fem = gender == "f"
    il = "elle" if fem else "il"
    name_seg, friend_seg = ((hero, "name"),), ((friend, "name"),)
    slots: dict[str, _Segs] = {
        "hero": name_seg, "Hero": name_seg, "friend": friend_seg, "Friend": friend_seg,
        "il": ((il, None),), "Il": ((il.capitalize(), None),),
        "lui": (("elle" if fem else "lui", None),),
        "e": (("e" if fem else "", None),), "fe": (("e" if fgender == "f" else "", None),),
        "ils": (("elles" if fem and fgender == "f" else "ils", None),),
        "une_petite_kind": ((("une petite " if fem else "un petit ") + kind, None),),
        "sa_famille": ((("sa " if fam_gender == "f" else "son ") + family, None),),
        "son_ami": (("son amie" if fgender == "f" else "son ami", None),),
        "le_place": _fr_noun_segs(place, pg, "le ", "la ", "l'"),
        "au_place": _fr_noun_segs(place, pg, "au ", "à la ", "à l'"),
        "du_place": _fr_noun_segs(place, pg, "du ", "de la ", "de l'"),
        "nouns": ((noun[1], "topic"),),
        "le_noun": _fr_noun_segs(noun[0], noun[2], "le ", "la ", "l'"),
        "son_noun": _fr_noun_segs(noun[0], noun[2], "son ", "sa ", "son "),
        "adj_noun": _fr_adj(adj, noun[2]),
        "un_noun2": (("un " if noun2[2] == "m" else "une ", None), (noun2[0], "topic")),
        "le_noun2": _fr_noun_segs(noun2[0], noun2[2], "le ", "la ", "l'"),
        "adj_noun2": _fr_adj(adj2, noun2[2]),
        "gadj_noun2": ((gadj[0] if noun2[2] == "m" else gadj[1], None),),
        "verb": ((verb[0], "topic"),), "verbed": ((verb[1], "topic"),),
        "verbait": ((verb[2], "topic"),), "verbaient": ((verb[2][:-1] + "ent", "topic"),),
        "emo_pos": ((_pick(rng, fr.EMO_POS, 1.3)[fem], None),),
        "emo_neg": ((_pick(rng, fr.EMO_NEG, 1.3)[fem], None),),
    }
    ctx = {"nouns": nouns, "adjs": adjs, "places": _FR_PLACES[topic]}
    b = _assemble(rng, fr.PLAN, _FR_SECTIONS, slots, _FR_FRESH, ctx)
    return _finish(b, _FR_WORDS, _FR_CONCEPT_OF, topic, french=True)


# ----------------------------------------------------------------------------- public API


def generate_stories(num_stories: int, seed: int, french_fraction: float = 0.15,
                     rare: Sequence[rare_concepts.RareConcept] = ()) -> list[Story]:
    """`num_stories` labelled stories, with `rare` (corpus/rare_concepts.py) planted in the
    English ones; a pure function of its arguments (byte for byte)."""
    if isinstance(num_stories, bool) or not isinstance(num_stories, int) or num_stories <= 0:
        raise ValueError(f"num_stories={num_stories!r} must be a positive integer (>= 1)")
    if not isinstance(french_fraction, (int, float)) or not 0.0 <= french_fraction <= 1.0:
        raise ValueError(f"french_fraction={french_fraction!r} must lie in [0, 1]")
    rng = random.Random(operator.index(seed))
    num_french = math.floor(num_stories * french_fraction + 0.5)
    french = frozenset(rng.sample(range(num_stories), num_french))
    stories = [_french_story(rng) if i in french else _english_story(rng)
               for i in range(num_stories)]
    if not rare:
        return stories
    planted = rare_concepts.plant_corpus([s.text for s in stories], [s.spans for s in stories],
                                         [i not in french for i in range(num_stories)], rare, seed)
    return [Story(text, spans) for text, spans in planted]


def topic_vocabulary() -> dict[str, frozenset[str]]:
    """Per topic, every lowercase word its slots can write, English and French (the words a
    topic concept labels; experiments/steering_dose_response.py counts them in generations)."""
    vocab = {}
    for topic in TOPICS:
        words: set[str] = set()
        for lexicon, french in ((en, False), (fr, True)):
            lex = lexicon.TOPICS[topic]
            forms = [w for noun in lex["nouns"] for w in noun[:2]]
            forms += [w for verb in lex["verbs"] for w in verb]
            forms += [w for adj in lex["adjs"] for w in adj] if french else list(lex["adjs"])
            if french:  # the third-person plural the French templates conjugate
                forms += [v[2][:-1] + "ent" for v in lex["verbs"]]
            else:
                forms += [third_person(v[0]) for v in lex["verbs"]]
            words.update(w for form in forms for w in _WORD_RE.findall(form.lower()))
        vocab[topic] = frozenset(words)
    return vocab


def distinct_words(texts: Iterable[str]) -> set[str]:
    """The distinct lowercase word forms (runs of unicode letters) in `texts`."""
    words: set[str] = set()
    for text in texts:
        words.update(_WORD_RE.findall(text.lower()))
    return words


def write_labelled_corpus(stories: Sequence[Story], text_path: str | os.PathLike,
                          labels_path: str | os.PathLike) -> None:
    """Write the stories in TinyStories format and their spans in the labels format of
    corpus/labels.py (what `corpus.path` + `corpus.labels` read back), in order."""
    with open(text_path, "w", encoding="utf-8", newline="\n") as f:
        for story in stories:
            f.write(f"{story.text}\n{EOT_LINE}\n")
    labels.write_labels(labels_path, (story.spans for story in stories))


def read_labels(labels_path: str | os.PathLike) -> list[tuple[Span, ...]]:
    """The spans written by write_labelled_corpus, one tuple per story."""
    return labels.read_labels(labels_path)
