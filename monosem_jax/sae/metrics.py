"""SAE quality: one train batch's statistics (the step's metrics, from dense or sparse codes) and
held-out reconstruction, sparsity, dead and dense features over an eval window."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from monosem_jax import batching
from monosem_jax.sae import model as sae_model

DENSE_THRESHOLD = 0.1  # a feature active on more than 10% of tokens counts as dense


# ----------------------------------------------------------------------------- one train batch


def reconstruction_metrics(x_BD: jax.Array, xhat_BD: jax.Array) -> dict[str, jax.Array]:
    """mse, nmse and explained variance of one batch (float32 scalars)."""
    x_BD = x_BD.astype(jnp.float32)
    sse_B = jnp.sum(jnp.square(x_BD - xhat_BD), axis=1)
    sse = jnp.sum(sse_B)
    centred_BD = x_BD - jnp.mean(x_BD, axis=0)[None]
    return {
        "mse": jnp.mean(sse_B),
        "nmse": sse / jnp.sum(jnp.square(x_BD)),
        "explained_variance": 1.0 - sse / jnp.sum(jnp.square(centred_BD)),
    }


def dense_code_stats(f_BF: jax.Array) -> dict[str, jax.Array]:
    """L0 and L1 per row (batch means) and which latents fired [F] of dense activations."""
    return {"l0": jnp.mean(jnp.sum(f_BF != 0, axis=1, dtype=jnp.float32)),
            "l1": jnp.mean(jnp.sum(jnp.abs(f_BF), axis=1)),
            "fired_F": jnp.any(f_BF > 0, axis=0)}


def relu_code_stats(pre_BF: jax.Array, active_B: jax.Array) -> dict[str, jax.Array]:
    """`dense_code_stats` of f = ReLU(pre_BF), given its per-row count of positive entries."""
    return {"l0": jnp.mean(active_B),
            "l1": jnp.mean(jnp.sum(jnp.maximum(pre_BF, 0.0), axis=1)),
            "fired_F": jnp.max(pre_BF, axis=0) > 0}


def sparse_code_stats(vals_N: jax.Array, cols_N: jax.Array, num_b: int,
                      num_f: int) -> dict[str, jax.Array]:
    """`dense_code_stats` of a sparse code: N entries (value, latent) of a batch of num_b rows,
    each (row, latent) at most once; zero values count as absent."""
    return {"l0": jnp.sum(vals_N != 0, dtype=jnp.float32) / num_b,
            "l1": jnp.sum(jnp.abs(vals_N)) / num_b,
            "fired_F": jnp.zeros((num_f,), bool).at[cols_N].max(vals_N > 0)}


def batch_metrics(x_BD: jax.Array, xhat_BD: jax.Array, f_BF: jax.Array) -> dict[str, jax.Array]:
    """mse, nmse, explained variance, L0 and L1 of one batch (float32 scalars)."""
    stats = dense_code_stats(f_BF)
    return {**reconstruction_metrics(x_BD, xhat_BD), "l0": stats["l0"], "l1": stats["l1"]}


# ----------------------------------------------------------------------------- held-out window


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
