"""The topic context gain on a constructed case whose answer is known exactly."""

import numpy as np
import pytest

from monosem_jax.corpus import dataset
from monosem_jax.gpt import context_probe

CONCEPTS = ["topic_a", "topic_b", "french"]
EOT = 0
TOPIC_TOKENS = {0: np.arange(1, 11), 1: np.arange(11, 21)}  # topic index -> its word ids
NEUTRAL = np.arange(21, 31)


def _split(docs):
    """A Split from (tokens, labels) documents: EOT d0 EOT d1 ..."""
    tokens, labels, starts = [], [], []
    for toks, labs in docs:
        tokens.append(EOT)
        labels.append(0)
        starts.append(len(tokens))
        tokens.extend(toks)
        labels.extend(labs)
    return dataset.Split(np.asarray(tokens, np.uint16), np.asarray(starts, np.int64),
                         np.asarray(labels, np.uint32))


def _doc(rng, topic, length=80, topic_slots=(5, 6, 7, 50, 51, 52, 60), extra_bits=0):
    toks = rng.choice(NEUTRAL, length)
    labs = np.full(length, extra_bits, np.uint32)
    for slot in topic_slots:  # window position = slot + 1 (position 0 is the EOT)
        toks[slot] = rng.choice(TOPIC_TOKENS[topic])
        labs[slot] |= 1 << topic
    return toks.tolist(), labs.tolist()


def oracle_losses(windows_WL1):
    """Loss 1 on a topic word whose topic appeared earlier in the window, 3 on other topic
    words, 2 elsewhere: a model that uses the story's topic exactly."""
    out = np.full((windows_WL1.shape[0], windows_WL1.shape[1] - 1), 2.0)
    for w, row in enumerate(windows_WL1):
        for p in range(1, len(row)):
            for ids in TOPIC_TOKENS.values():
                if row[p] in ids:
                    out[w, p - 1] = 1.0 if np.isin(row[:p], ids).any() else 3.0
    return out


def test_gain_is_exact_on_an_oracle():
    rng = np.random.default_rng(0)
    docs = [_doc(rng, i % 2) for i in range(12)]
    cfg = context_probe.ProbeConfig(num_pairs=50, seed=1)
    out = context_probe.context_gain_of(oracle_losses, _split(docs), CONCEPTS, cfg)
    # Scored: the topic words at window positions 51, 52, 53, 61 of A (slots 50-52, 60). With
    # A's own opening (topic words at positions 6-8) each costs 1; after B's opening (the other
    # topic; A's positions 32-43 carry none of A's words) the first costs 3 and, once A's topic
    # has appeared, the next three cost 1.
    assert out["topic_pairs"] == 50
    assert out["topic_scored_tokens"] == 50 * 4
    assert out["topic_loss_own"] == pytest.approx(1.0)
    assert out["topic_loss_spliced"] == pytest.approx((3 + 1 + 1 + 1) / 4)
    assert out["topic_context_gain"] == pytest.approx(0.5)


def test_a_model_that_ignores_context_gains_nothing():
    rng = np.random.default_rng(0)
    docs = [_doc(rng, i % 2) for i in range(12)]
    flat = lambda w: np.full((w.shape[0], w.shape[1] - 1), 2.5)  # noqa: E731
    out = context_probe.context_gain_of(flat, _split(docs), CONCEPTS, context_probe.ProbeConfig())
    assert out["topic_context_gain"] == 0.0


def test_documents_without_one_topic_or_in_french_or_short_are_skipped():
    rng = np.random.default_rng(0)
    docs = [_doc(rng, 0), _doc(rng, 1), _doc(rng, 1, extra_bits=1 << 2),  # french
            _doc(rng, 0, length=40, topic_slots=(5,))]  # shorter than the window
    both = _doc(rng, 0)
    both[1][20] |= 1 << 1  # a second topic
    split = _split(docs + [both])
    starts, topics, bits = context_probe.document_topics(split, CONCEPTS, ("french",), 64)
    assert starts.tolist() == split.doc_starts_D[:2].tolist()
    assert topics.tolist() == [0, 1] and bits == [0, 1]


def test_no_topic_labels_gives_none():
    rng = np.random.default_rng(0)
    split = _split([_doc(rng, 0), _doc(rng, 1)])
    out = context_probe.context_gain_of(oracle_losses, split, ["dialogue", "name"],
                                        context_probe.ProbeConfig())
    assert out["topic_context_gain"] is None
    unlabelled = dataset.Split(split.tokens_N, split.doc_starts_D, None)
    assert context_probe.context_gain_of(oracle_losses, unlabelled, CONCEPTS,
                                         context_probe.ProbeConfig())["topic_context_gain"] is None
