"""Does the LM use its context? The topic context gain and the loss by position.

Topic context gain (nats): take pairs of eval documents A, B whose topics differ. Score the loss
on A's topic-word tokens at positions [score_start, score_end) of A's own window (position 0 is
the document's end-of-text token) twice: after A's own first `prefix` tokens, and after B's first
`prefix` tokens followed by A's tokens from `prefix` on. The gap [prefix, score_start) keeps the
tokens right after the splice out of the score. The gain is the spliced loss minus the own loss,
pooled over the scored tokens: how much knowing the story's topic helps predict its topic words.
A model that ignores the topic scores ~0.

A document's topic is its one `topic_*` concept (documents with none, several, or a `skip`
concept such as `french` are not used), so any labelled corpus with topic_* concepts works.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from monosem_jax import batching
from monosem_jax.corpus import dataset
from monosem_jax.gpt import model as gpt_model

TOPIC_PREFIX = "topic_"
# Window-position buckets of the loss-by-position profile: [start, end) pairs.
POSITION_BUCKETS = ((0, 4), (4, 16), (16, 32), (32, 64), (64, 96), (96, 128))


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    num_pairs: int = 400
    prefix: int = 32  # tokens taken from B in the spliced window
    score_start: int = 44  # first scored position (positions prefix..score_start-1 left out)
    score_end: int = 64  # window length; scored positions are [score_start, score_end)
    skip_concepts: tuple[str, ...] = ("french",)  # documents carrying these are not used
    seed: int = 0
    batch_size: int = 64


@functools.partial(jax.jit, static_argnames="model_cfg")
def _token_losses(params, tokens_BL1, model_cfg):
    """Per-position next-token loss [B, L] of windows [B, L + 1]."""
    logits_BLV, _ = gpt_model.forward(model_cfg, params, tokens_BL1[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BLV, tokens_BL1[:, 1:])


def token_losses(model_cfg, params, windows_WL1: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Per-position losses [W, L] in fixed-size batches (the last one padded)."""
    out = []
    for _, chunk_BL1, n in batching.fixed_batches(windows_WL1, batch_size):
        losses_BL = _token_losses(params, jnp.asarray(chunk_BL1), model_cfg)
        out.append(np.asarray(losses_BL)[:n])
    return np.concatenate(out)


def document_topics(split: dataset.Split, concepts, skip: tuple[str, ...], length: int):
    """(doc starts, topic index) of the documents with exactly one topic and `length` tokens
    from their end-of-text token on; topic indices refer to `topic_bits`."""
    topic_bits = [i for i, c in enumerate(concepts) if c.startswith(TOPIC_PREFIX)]
    skip_mask = np.uint32(sum(1 << i for i, c in enumerate(concepts) if c in skip))
    ends = np.append(split.doc_starts_D[1:] - 1, len(split.tokens_N))
    starts, topics = [], []
    for start, end in zip(split.doc_starts_D.tolist(), ends.tolist(), strict=False):
        if end - (start - 1) < length:
            continue
        doc_mask = np.bitwise_or.reduce(np.asarray(split.labels_N[start:end]))
        if doc_mask & skip_mask:
            continue
        present = [t for t, bit in enumerate(topic_bits) if doc_mask >> np.uint32(bit) & 1]
        if len(present) == 1:
            starts.append(start)
            topics.append(present[0])
    return np.asarray(starts, np.int64), np.asarray(topics, np.int64), topic_bits


def topic_context_gain(model_cfg, params, split: dataset.Split, concepts,
                       cfg: ProbeConfig = ProbeConfig()) -> dict:
    """{topic_context_gain, own/spliced loss, scored tokens, pairs} of a GPT; gain None when the
    corpus has no usable topic labels."""
    if cfg.score_end > model_cfg.context_len + 1:
        raise ValueError(f"score_end={cfg.score_end} exceeds the model's context + 1")
    losses_fn = functools.partial(token_losses, model_cfg, params, batch_size=cfg.batch_size)
    return context_gain_of(losses_fn, split, concepts, cfg)


def context_gain_of(losses_fn, split: dataset.Split, concepts, cfg: ProbeConfig) -> dict:
    """The topic context gain of any model given as `losses_fn(windows [W, L + 1]) -> [W, L]`
    per-position next-token losses."""
    empty = {"topic_context_gain": None, "topic_pairs": 0, "topic_scored_tokens": 0}
    if split.labels_N is None or not any(c.startswith(TOPIC_PREFIX) for c in concepts):
        return empty
    length = cfg.score_end
    starts, topics, topic_bits = document_topics(split, concepts, cfg.skip_concepts, length)
    if len(set(topics.tolist())) < 2:
        return empty
    rng = np.random.default_rng(cfg.seed)
    a_N = rng.integers(0, len(starts), cfg.num_pairs)
    b_N = rng.integers(0, len(starts), cfg.num_pairs)
    for _ in range(100):  # redraw B until every pair's topics differ
        same = topics[a_N] == topics[b_N]
        if not same.any():
            break
        b_N[same] = rng.integers(0, len(starts), int(same.sum()))
    keep = topics[a_N] != topics[b_N]
    a_N, b_N = a_N[keep], b_N[keep]
    offsets_L = np.arange(length)
    tokens = np.asarray(split.tokens_N)
    labels = np.asarray(split.labels_N)
    own_NL = tokens[starts[a_N, None] - 1 + offsets_L].astype(np.int32)
    spliced_NL = own_NL.copy()
    spliced_NL[:, : cfg.prefix] = tokens[starts[b_N, None] - 1 + offsets_L[: cfg.prefix]]
    # Target at window position p is scored when p is in [score_start, score_end) and carries
    # A's topic; losses[:, p - 1] predicts position p.
    bit_N = np.asarray(topic_bits)[topics[a_N]].astype(np.uint32)
    target_labels_NL = labels[starts[a_N, None] - 1 + offsets_L]
    is_topic_NL = (target_labels_NL >> bit_N[:, None]) & 1 == 1
    scored_NL = np.zeros_like(is_topic_NL)
    scored_NL[:, cfg.score_start : cfg.score_end] = is_topic_NL[:, cfg.score_start : cfg.score_end]
    scored_NL1 = scored_NL[:, 1:]  # aligned with the loss of predicting positions 1..L-1
    own, spliced = losses_fn(own_NL), losses_fn(spliced_NL)
    n = int(scored_NL1.sum())
    if n == 0:
        return {**empty, "topic_pairs": int(len(a_N))}
    own_loss, spliced_loss = float(own[scored_NL1].mean()), float(spliced[scored_NL1].mean())
    return {
        "topic_context_gain": spliced_loss - own_loss,
        "topic_loss_own": own_loss,
        "topic_loss_spliced": spliced_loss,
        "topic_pairs": int(len(a_N)),
        "topic_scored_tokens": n,
    }


def loss_by_position(model_cfg, params, windows_WL1: np.ndarray, batch_size: int) -> dict:
    """Mean next-token loss per window-position bucket, e.g. {"0-4": 2.1, "4-16": 1.4, ...}."""
    losses_WL = token_losses(model_cfg, params, windows_WL1, batch_size)
    length = losses_WL.shape[1]
    return {f"{a}-{min(b, length)}": float(losses_WL[:, a:b].mean())
            for a, b in POSITION_BUCKETS if a < length}
