"""LM batches from the flat token arrays: every batch is a pure function of (seed, step)."""

from __future__ import annotations

import numpy as np


def train_batch(tokens_N: np.ndarray, *, seed: int, step: int, batch_size: int, length: int):
    """[batch_size, length + 1] int32 windows at random offsets (nanoGPT style).

    The offsets come from a generator seeded by (seed, step) alone, so a resumed run sees exactly
    the batches an uninterrupted one would.
    """
    num_starts = tokens_N.shape[0] - length - 1
    if num_starts <= 0:
        raise ValueError(
            f"the training split has {tokens_N.shape[0]} tokens, fewer than one context of "
            f"{length + 1}; use a larger corpus or a shorter model.context_len"
        )
    rng = np.random.default_rng([seed, step])
    starts_B = rng.integers(0, num_starts + 1, size=batch_size)
    return np.asarray(tokens_N[starts_B[:, None] + np.arange(length + 1)], dtype=np.int32)


def eval_windows(tokens_N: np.ndarray, *, length: int, max_tokens: int, multiple: int):
    """Consecutive non-overlapping [W, length + 1] windows (stride `length`) from the start.

    The count is capped by `max_tokens` and rounded down to a multiple of `multiple` (the batch
    size), so the evaluation is the same fixed set of predictions every time.
    """
    available = (tokens_N.shape[0] - 1) // length
    count = min(available, max(1, max_tokens // length))
    count -= count % multiple
    if count <= 0:
        raise ValueError(
            f"the eval split has {tokens_N.shape[0]} tokens, too few for {multiple} windows of "
            f"{length + 1}; raise tokenizer.eval_fraction or lower lm.train.batch_size"
        )
    starts_W = np.arange(count) * length
    return np.asarray(tokens_N[starts_W[:, None] + np.arange(length + 1)], dtype=np.int32)
