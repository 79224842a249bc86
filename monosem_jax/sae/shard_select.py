"""Top-k selections over the latent axis that stay local to the dictionary's shards.

A dictionary sharded over the mesh's 'model' axis (parallel.sae_state_shardings) leaves each
device M = d_sae / m latents of every row. A plain `lax.top_k` over F would gather the whole
[B, F] to every device first; instead each shard takes its own top k of its M latents, and one
small top k over the m·k candidates merges them. The merge is exact: every latent of the global
top k is in its shard's top k. Ties resolve as `lax.top_k` does (the lower index first), because
the candidates are laid out shard by shard, in index order.

Without a mesh (or with one 'model' device) these are `lax.top_k`, unchanged. The mesh is the
ambient one (`jax.set_mesh`, as sae/loop.py trains), so the step functions stay mesh-agnostic.
Shape letters: M = latents per shard (F / m), C = candidates (m·k).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

MODEL_AXIS = "model"
DATA_AXIS = "data"


def _axis_size(name: str) -> int:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or name not in mesh.axis_names:
        return 1
    return mesh.shape[name]


def model_shards(num_f: int, k: int) -> int:
    """Shards of the latent axis a selection of k of `num_f` can use (1 = select unsharded)."""
    m = _axis_size(MODEL_AXIS)
    return m if m > 1 and num_f % m == 0 and num_f // m >= k else 1


def latent_top_k(z_BF: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`lax.top_k(z_BF, k)` over the last axis, selected shard-locally then merged."""
    num_f = z_BF.shape[-1]
    m = model_shards(num_f, k)
    if m == 1:
        return jax.lax.top_k(z_BF, k)
    lead = z_BF.shape[:-1]
    num_m = num_f // m
    z_BmM = z_BF.reshape(*lead, m, num_m)
    z_BmM = jax.lax.with_sharding_constraint(
        z_BmM, P(*(P.UNCONSTRAINED,) * len(lead), MODEL_AXIS, None))
    vals_Bmk, local_Bmk = jax.lax.top_k(z_BmM, k)
    offsets = jnp.arange(m, dtype=local_Bmk.dtype) * num_m
    idx_Bmk = local_Bmk + offsets.reshape((1,) * len(lead) + (m, 1))
    vals_BC = vals_Bmk.reshape(*lead, m * k)
    vals_BK, pick_BK = jax.lax.top_k(vals_BC, k)
    idx_BK = jnp.take_along_axis(idx_Bmk.reshape(*lead, m * k), pick_BK, axis=-1)
    return vals_BK, idx_BK


def batch_top_k(z_BF: jax.Array, num_s: int) -> tuple[jax.Array, jax.Array]:
    """`lax.top_k(z_BF.reshape(-1), num_s)`: values and flat indices b·F + i, selected per
    (data, model) block of the batch then merged (ties-free inputs select the same entries in the
    same order; equal values may come in another order than the unsharded top_k's)."""
    num_b, num_f = z_BF.shape
    m, n = _axis_size(MODEL_AXIS), _axis_size(DATA_AXIS)
    n = n if num_b % n == 0 else 1
    m = m if num_f % m == 0 else 1
    block = (num_b // n) * (num_f // m)
    if m * n == 1 or block < num_s:
        return jax.lax.top_k(z_BF.reshape(-1), num_s)
    num_m, rows = num_f // m, num_b // n
    z_nbmM = z_BF.reshape(n, rows, m, num_m)
    z_nbmM = jax.lax.with_sharding_constraint(z_nbmM, P(DATA_AXIS, None, MODEL_AXIS, None))
    z_nmX = z_nbmM.transpose(0, 2, 1, 3).reshape(n, m, rows * num_m)
    vals_nmS, local_nmS = jax.lax.top_k(z_nmX, num_s)
    row_nmS = local_nmS // num_m + (jnp.arange(n) * rows).reshape(n, 1, 1)
    col_nmS = local_nmS % num_m + (jnp.arange(m) * num_m).reshape(1, m, 1)
    flat_C = (row_nmS * num_f + col_nmS).reshape(-1)
    vals_S, pick_S = jax.lax.top_k(vals_nmS.reshape(-1), num_s)
    return vals_S, flat_C[pick_S]
