"""Held-out SAE quality: reconstruction, sparsity, dead and dense features over an eval window."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from monosem_jax import batching
from monosem_jax.sae import model as sae_model

DENSE_THRESHOLD = 0.1  # a feature active on more than 10% of tokens counts as dense


@functools.partial(jax.jit, static_argnames="cfg")
def _chunk_sums(params, x_BD, valid_B, hp, cfg):
    """Sums over the valid rows of one chunk (padding rows have valid=False)."""
    x_BD = x_BD * valid_B[:, None]  # padding rows count as zeros
    f_BF = sae_model.encode(cfg, params, x_BD, hp) * valid_B[:, None]
    err_BD = (x_BD - sae_model.decode(params, f_BF)) * valid_B[:, None]
    return {
        "sse": jnp.sum(err_BD**2),
        "sum_sq": jnp.sum(x_BD**2),
        "sum_x_D": jnp.sum(x_BD, axis=0),
        "active": jnp.sum(f_BF > 0),
        "fires_F": jnp.sum(f_BF > 0, axis=0),
    }


def evaluate(cfg, params, hp, x_ND: np.ndarray, chunk: int = 4096) -> tuple[dict, np.ndarray]:
    """Metrics over every row of `x_ND` and each feature's firing frequency [F].

    explained_variance = 1 - SSE / sum ||x - mean(x)||^2 with the mean over the whole window;
    mse is the mean over rows of the squared error summed over d (the loss's definition).
    """
    n = x_ND.shape[0]
    if n == 0:
        raise ValueError("no held-out rows to evaluate on; raise eval_rows")
    chunk = min(chunk, n)
    totals = None
    for start in range(0, n, chunk):
        # One compiled shape: the last chunk is padded, its padding masked out.
        x_BD, real = batching.pad_rows(np.asarray(x_ND[start : start + chunk], np.float32), chunk)
        valid_B = batching.valid_rows(real, chunk)
        sums = jax.device_get(_chunk_sums(params, x_BD, valid_B, hp, cfg))
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    mean_D = totals["sum_x_D"] / n
    total_var = float(totals["sum_sq"]) - n * float(mean_D @ mean_D)
    density_F = totals["fires_F"].astype(np.float64) / n
    metrics = {
        "eval_rows": n,
        "mse": float(totals["sse"]) / n,
        "nmse": float(totals["sse"]) / float(totals["sum_sq"]) if totals["sum_sq"] > 0 else np.nan,
        # NaN (written as null) when the eval rows have no variance to explain.
        "explained_variance": 1.0 - float(totals["sse"]) / total_var if total_var > 0 else np.nan,
        "l0": float(totals["active"]) / n,
        "dead_fraction": float(np.mean(density_F == 0)),
        "dense_fraction": float(np.mean(density_F > DENSE_THRESHOLD)),
    }
    return metrics, density_F
