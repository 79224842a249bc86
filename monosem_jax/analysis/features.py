"""SAE features on the LM's own contexts: the splice, and feature activations per token.

The SAE sees hook activations scaled by the store's `norm_scale` (E||x|| = sqrt(d)); splicing
maps back: x -> decode(encode(x * c)) / c. Reported activations are `feature_acts` (decoder norms
folded in for anthropic_2024). Contexts are the consecutive `context_len` windows of a split's
packed token stream, as in capture, so token t of window w is global index w * L + t.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import jax
import numpy as np

from monosem_jax import batching
from monosem_jax.corpus import dataset
from monosem_jax.gpt import model as gpt_model
from monosem_jax.sae import artifact as sae_artifact
from monosem_jax.sae.artifact import TrainedSAE


def windows(workdir: str, split: str, length: int, max_tokens: int = 0) -> np.ndarray:
    """[W, L] int32: the split's consecutive context windows (capped at max_tokens if > 0)."""
    tokens_N = dataset.load_split(os.path.join(workdir, "data"), split).tokens_N
    count = tokens_N.shape[0] // length
    if max_tokens:
        count = min(count, max(1, max_tokens // length))
    return np.asarray(tokens_N[: count * length], np.int32).reshape(count, length)


@functools.partial(jax.jit, static_argnames="model_cfg")
def _acts_and_features(lm_params, sae: TrainedSAE, tokens_BL, model_cfg):
    _, captured = gpt_model.forward(model_cfg, lm_params, tokens_BL, capture=[sae.hook])
    x_BLD = captured[sae.hook]
    return x_BLD, sae_artifact.feature_acts(sae, x_BLD)


def iterate_features(
    model_cfg, lm_params, sae: TrainedSAE, windows_WL: np.ndarray, batch_size: int = 16
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(first window index, tokens [B, L], hook acts [B, L, D], features [B, L, F]) per batch.

    The last batch is padded to `batch_size` (one compiled shape) and trimmed before yielding.
    """
    for first, tokens_BL, n in batching.fixed_batches(windows_WL, batch_size):
        x_BLD, f_BLF = _acts_and_features(lm_params, sae, tokens_BL, model_cfg)
        yield first, tokens_BL[:n], np.asarray(x_BLD)[:n], np.asarray(f_BLF)[:n]
