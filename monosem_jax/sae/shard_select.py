"""Top-k selections over the latent axis that stay local to the dictionary's shards.

A dictionary sharded over the mesh's 'model' axis (parallel.sae_state_shardings) leaves each
device M = d_sae / m latents of every row. A plain `lax.top_k` over F would gather the whole
[B, F] to every device first; instead each shard takes its own top k of its M latents, and one
small top k over the m·k candidates merges them. The merge is exact: every latent of the global
top k is in its shard's top k. Ties resolve as `lax.top_k` does (the lower index first), because
the candidates are laid out shard by shard, in index order.

Without a mesh (or with one 'model' device) these are `lax.top_k`, unchanged. The mesh is the
ambient one (`jax.set_mesh`, as sae/loop.py trains), so the step functions stay mesh-agnostic.
Shape letters: A = the shards (blocks) of the mesh, G = one shard's chunk of latents (F / m),
X = candidates or a block's entries (scratch, named where made); m shards, n data blocks.
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
    num_g = num_f // m
    z_BAG = z_BF.reshape(*lead, m, num_g)
    z_BAG = jax.lax.with_sharding_constraint(
        z_BAG, P(*(P.UNCONSTRAINED,) * len(lead), MODEL_AXIS, None))
    vals_BAK, local_BAK = jax.lax.top_k(z_BAG, k)
    offsets_A1 = (jnp.arange(m, dtype=local_BAK.dtype) * num_g)[:, None]
    idx_BAK = local_BAK + offsets_A1.reshape((1,) * len(lead) + (m, 1))
    vals_BX = vals_BAK.reshape(*lead, m * k)  # X: the m·k candidates, shard by shard
    vals_BK, pick_BK = jax.lax.top_k(vals_BX, k)
    idx_BK = jnp.take_along_axis(idx_BAK.reshape(*lead, m * k), pick_BK, axis=-1)
    return vals_BK, idx_BK


def batch_top_k(z_BF: jax.Array, num_s: int) -> tuple[jax.Array, jax.Array]:
    """`lax.top_k(z_BF.reshape(-1), num_s)`: values and flat indices b·F + i, selected per
    (data, model) block of the batch then merged (ties-free inputs select the same entries in the
    same order; equal values may come in another order than the unsharded top_k's)."""
    num_b, num_f = z_BF.shape
    m, n = _axis_size(MODEL_AXIS), _axis_size(DATA_AXIS)
    n = n if num_b % n == 0 else 1
    m = m if num_f % m == 0 else 1
    rows, num_g = num_b // n, num_f // m
    if m * n == 1 or rows * num_g < num_s:
        return jax.lax.top_k(z_BF.reshape(-1), num_s)
    # [n data blocks, a block's rows, m model blocks, a block's latents]: one block per device
    z_ABAG = jax.lax.with_sharding_constraint(z_BF.reshape(n, rows, m, num_g),
                                              P(DATA_AXIS, None, MODEL_AXIS, None))
    z_AX = z_ABAG.transpose(0, 2, 1, 3).reshape(n * m, rows * num_g)  # X: a block's entries
    vals_AS, local_AS = jax.lax.top_k(z_AX, num_s)
    block_A = jnp.arange(n * m)
    row_AS = local_AS // num_g + (block_A // m * rows)[:, None]
    col_AS = local_AS % num_g + (block_A % m * num_g)[:, None]
    vals_S, pick_S = jax.lax.top_k(vals_AS.reshape(-1), num_s)
    return vals_S, (row_AS * num_f + col_AS).reshape(-1)[pick_S]
