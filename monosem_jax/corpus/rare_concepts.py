"""Rare planted concepts: recurring characters at controlled, log-spaced frequencies.

Scaling Monosemanticity asks which concepts a dictionary of a given size contains at all, and
finds it depends on the concept's frequency times the number of alive features. Measuring that
needs concepts whose frequencies are known and span decades, which the default corpus's twelve
(each common) do not. Each rare concept here is one invented character: a name no lexicon word
shares, a role and a thing it carries, met in a few fixed sentences that are inserted between a
story's sentences, so the LM can learn who the character is. The label is the name.

Concept i (`rare_00`, `rare_01`, ...) is planted at `rates[i]` occurrences per word of the
corpus, log-spaced from the most to the least frequent. Words are not tokens (a rare name splits
into several BPE pieces): experiments measure the labelled tokens' frequency in the dataset.
Only English stories get the sentences (French ones keep their language); the rate of a story
is raised so that the whole corpus's rate is the planned one.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Sequence

from monosem_jax.corpus import lexicon as en
from monosem_jax.corpus.labels import Span

# (role, the thing the character carries): plain words that no concept's whole-word scan
# (emotion, negation, number) labels.
_ROLES = (
    ("lamplighter", "lantern"), ("clockmaker", "brass key"), ("beekeeper", "honey jar"),
    ("ferryman", "long oar"), ("tailor", "silver needle"), ("painter", "striped brush"),
    ("mapmaker", "rolled map"), ("candlemaker", "tall candle"), ("potter", "clay bowl"),
    ("weaver", "blue scarf"), ("shepherd", "crooked staff"), ("miller", "flour sack"),
    ("bellringer", "copper bell"), ("glassblower", "glass bead"), ("cobbler", "tiny hammer"),
    ("stargazer", "old telescope"),
)
MAX_CONCEPTS = len(_ROLES)
_TEMPLATES = (
    "{Name} the {role} walked past with {a_thing}.",
    "Everyone knew {Name}, the {role} with the {thing}.",
    "Later, {Name} the {role} came by and waved.",
    "{Name} the {role} put the {thing} down by the door.",
)
_ONSETS = ("Qu", "Zh", "Vr", "Thr", "Gl", "Bry", "Sk", "Dw", "Pl", "Kr", "Fl", "Wr")
_NUCLEI = ("o", "a", "i", "e", "u", "y")
_CODAS = ("rv", "mb", "lx", "sp", "nd", "zz", "rk", "lt", "wn", "ff")
_ENDINGS = ("ax", "ible", "ovan", "ettle", "umo", "iss", "ander", "ock")
_WORD_RE = re.compile(r"[^\W\d_]+")


@dataclasses.dataclass(frozen=True)
class RareConcept:
    """One planted character: `concept` labels every occurrence of `name`."""

    concept: str
    name: str
    role: str
    thing: str
    rate: float  # planned occurrences per word of the corpus


def planned_rates(count: int, max_rate: float, min_rate: float) -> tuple[float, ...]:
    """`count` rates log-spaced from max_rate down to min_rate (one: max_rate)."""
    if count == 1:
        return (float(max_rate),)
    step = math.log(min_rate / max_rate) / (count - 1)
    return tuple(float(max_rate * math.exp(i * step)) for i in range(count))


def _lexicon_words() -> set[str]:
    words = {w.lower() for w in en.GIRL_NAMES + en.BOY_NAMES}
    for lex in en.TOPICS.values():
        for group in lex.values():
            for item in group:
                for form in (item if isinstance(item, tuple) else (item,)):
                    words.update(_WORD_RE.findall(str(form).lower()))
    return words


def make_concepts(count: int, max_rate: float, min_rate: float) -> tuple[RareConcept, ...]:
    """The planted characters: names drawn from invented syllables with a fixed seed (the same
    names in every corpus), distinct from each other and from the lexicon's words."""
    if not 0 < count <= MAX_CONCEPTS:
        raise ValueError(f"rare_concepts={count} must lie in [1, {MAX_CONCEPTS}]")
    if not 0 < min_rate <= max_rate < 1:
        raise ValueError(f"rare rates must satisfy 0 < min_rate={min_rate} <= "
                         f"max_rate={max_rate} < 1")
    rng = random.Random("monosem rare concepts")
    taken, names = _lexicon_words(), []
    while len(names) < count:
        name = (rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS)
                + rng.choice(_ENDINGS))
        if name.lower() not in taken:
            taken.add(name.lower())
            names.append(name)
    return tuple(RareConcept(f"rare_{i:02d}", name, *_ROLES[i], rate)
                 for i, (name, rate) in enumerate(zip(names, planned_rates(
                     count, max_rate, min_rate), strict=True)))


def _sentence(rng: random.Random, concept: RareConcept) -> tuple[str, list[tuple[int, int]]]:
    """A planted sentence and its name's character spans."""
    thing = concept.thing
    article = "an" if thing[0] in "aeiou" else "a"
    text = rng.choice(_TEMPLATES).format(Name="\0", role=concept.role, thing=thing,
                                          a_thing=f"{article} {thing}")
    spans, parts = [], text.split("\0")
    out = parts[0]
    for part in parts[1:]:
        spans.append((len(out), len(out) + len(concept.name)))
        out += concept.name + part
    return out, spans


def _boundaries(text: str, spans: Sequence[Span]) -> list[int]:
    """Where a sentence may go: after a sentence's end and its space or newline, outside quotes
    and every span (so no planted sentence falls into a dialogue span)."""
    inside = bytearray(len(text) + 1)
    for span in spans:
        inside[span.start + 1:span.end] = b"\1" * max(0, span.end - span.start - 1)
    out, quotes = [], 0
    for i, ch in enumerate(text):
        if ch == '"':
            quotes += 1
        elif (ch in " \n" and i > 0 and text[i - 1] in ".!?" and quotes % 2 == 0
              and not inside[i + 1]):
            out.append(i + 1)
    return out


def plant(text: str, spans: Sequence[Span], concepts: Sequence[RareConcept], boost: float,
          rng: random.Random) -> tuple[str, tuple[Span, ...]]:
    """`text` with planted sentences (Poisson counts: rate × boost × the story's words, per
    concept) and its spans shifted, plus the names' spans."""
    words = len(_WORD_RE.findall(text))
    inserts = []  # (boundary index, sentence, name spans, concept)
    slots = _boundaries(text, spans)
    if not slots:
        return text, tuple(spans)
    for concept in concepts:
        for _ in range(_poisson(rng, concept.rate * boost * words)):
            sentence, name_spans = _sentence(rng, concept)
            inserts.append((rng.choice(slots), sentence, name_spans, concept.concept))
    if not inserts:
        return text, tuple(spans)
    inserts.sort(key=lambda item: item[0])  # stable: same-place sentences keep their order
    pieces, new_spans, shift, prev = [], [], 0, 0
    old = sorted(spans, key=lambda s: s.start)
    j = 0
    for at, sentence, name_spans, concept in inserts:
        while j < len(old) and old[j].start < at:
            new_spans.append(Span(old[j].start + shift, old[j].end + shift, old[j].concept))
            j += 1
        pieces.append(text[prev:at])
        pieces.append(sentence + " ")
        new_spans.extend(Span(at + shift + a, at + shift + b, concept) for a, b in name_spans)
        shift += len(sentence) + 1
        prev = at
    pieces.append(text[prev:])
    new_spans.extend(Span(s.start + shift, s.end + shift, s.concept) for s in old[j:])
    return "".join(pieces), tuple(sorted(new_spans, key=lambda s: (s.start, s.end, s.concept)))


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's product of uniforms; the means here are small)."""
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def plant_corpus(texts: Sequence[str], spans: Sequence[Sequence[Span]], english: Sequence[bool],
                 concepts: Sequence[RareConcept], seed: int) -> list[tuple[str, tuple[Span, ...]]]:
    """(text, spans) of every story with the concepts planted in its English ones; a pure
    function of its arguments (its own random stream, so the stories themselves are those of
    the corpus without rare concepts)."""
    words = [len(_WORD_RE.findall(t)) for t in texts]
    english_words = sum(w for w, is_en in zip(words, english, strict=True) if is_en)
    if english_words == 0:
        raise ValueError("rare concepts are planted in English stories; this corpus has none "
                         "(corpus.french_fraction=1)")
    boost = sum(words) / english_words
    rng = random.Random(f"rare concepts {seed}")
    return [plant(t, s, concepts, boost, rng) if is_en else (t, tuple(s))
            for t, s, is_en in zip(texts, spans, english, strict=True)]
