"""The encoder product computed once, its gradient attached where the loss reads it.

A train step computes the pre-activations z = x W_enc + bias [B, F] once, outside any gradient
(it needs all of them to choose the active latents), and hands them to the loss as data. The loss
then reads z through one of these functions, whose custom VJPs give W_enc, the bias and x the
gradient of exactly the entries it read:

  attach_dense  all of z: dW_enc = xᵀ·dz, the dense [D,B]x[B,F] product (the dense step)
  attach_rows   K entries per row z[b, idx_BK[b]]: dW_enc from B·K rows of d scatter-added into
                an [F, D] buffer (a contiguous row per latent), then transposed
  attach_pairs  S (row, latent) pairs anywhere in the batch (BatchTopK): the same scatter-add

With ReLU, TopK or JumpReLU the loss's gradient wrt z is zero outside the active latents, so
attach_rows/attach_pairs over a set containing them give the same gradient as attach_dense, up to
float32 summation order, for the cost of the active latents (experiments/README.md,
topk_encoder_grad.py). `pre_BF`'s own cotangent is dropped: pass it under stop_gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def attach_dense(pre_BF, x_BD, w_enc_DF, bias_F):
    """pre_BF (= x_BD W_enc + bias_F) with the gradient of the dense encoder product."""
    return pre_BF


def _dense_fwd(pre_BF, x_BD, w_enc_DF, bias_F):
    return pre_BF, (x_BD, w_enc_DF)


def _dense_bwd(res, g_BF):
    x_BD, w_enc_DF = res
    return None, g_BF @ w_enc_DF.T, x_BD.T @ g_BF, jnp.sum(g_BF, axis=0)


attach_dense.defvjp(_dense_fwd, _dense_bwd)


def _scatter_rows(g_S, terms_SD, cols_S, num_f):
    """(dW_enc [D, F], dbias [F]) of the pairs: Σ over pairs with latent i of g·x_row."""
    dw_FD = jnp.zeros((num_f, terms_SD.shape[1]), terms_SD.dtype).at[cols_S].add(terms_SD)
    return dw_FD.T, jnp.zeros((num_f,), g_S.dtype).at[cols_S].add(g_S)


@jax.custom_vjp
def attach_rows(pre_BF, x_BD, w_enc_DF, bias_F, idx_BK):
    """pre_BF[b, idx_BK[b, j]] [B, K], with a gradient paid for by the B·K read entries."""
    return jnp.take_along_axis(pre_BF, idx_BK, axis=1)


def _rows_fwd(pre_BF, x_BD, w_enc_DF, bias_F, idx_BK):
    return attach_rows(pre_BF, x_BD, w_enc_DF, bias_F, idx_BK), (x_BD, w_enc_DF, idx_BK)


def _rows_bwd(res, g_BK):
    x_BD, w_enc_DF, idx_BK = res
    num_b, num_k = idx_BK.shape
    terms_SD = (g_BK[..., None] * x_BD[:, None, :]).reshape(num_b * num_k, -1)
    dw_DF, dbias_F = _scatter_rows(g_BK.reshape(-1), terms_SD, idx_BK.reshape(-1),
                                   w_enc_DF.shape[1])
    # dx: the K read encoder columns per row (XLA drops it when, as in training, x needs none).
    dx_BD = jnp.einsum("bk,bkd->bd", g_BK, w_enc_DF.T[idx_BK])
    return None, dx_BD, dw_DF, dbias_F, None


attach_rows.defvjp(_rows_fwd, _rows_bwd)


@jax.custom_vjp
def attach_pairs(pre_BF, x_BD, w_enc_DF, bias_F, rows_S, cols_S):
    """pre_BF[rows_S, cols_S] [S], with a gradient paid for by the S read entries."""
    return pre_BF[rows_S, cols_S]


def _pairs_fwd(pre_BF, x_BD, w_enc_DF, bias_F, rows_S, cols_S):
    return attach_pairs(pre_BF, x_BD, w_enc_DF, bias_F, rows_S, cols_S), (
        x_BD, w_enc_DF, rows_S, cols_S)


def _pairs_bwd(res, g_S):
    x_BD, w_enc_DF, rows_S, cols_S = res
    dw_DF, dbias_F = _scatter_rows(g_S, g_S[:, None] * x_BD[rows_S], cols_S, w_enc_DF.shape[1])
    dx_BD = jnp.zeros_like(x_BD).at[rows_S].add(g_S[:, None] * w_enc_DF.T[cols_S])
    return None, dx_BD, dw_DF, dbias_F, None, None


attach_pairs.defvjp(_pairs_fwd, _pairs_bwd)
