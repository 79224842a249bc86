"""Sparse SAE losses: the decoder and the encoder's weight gradient paid for by the active latents.

Only the encoder's forward product x·W_enc needs the whole dictionary. With ReLU, TopK or JumpReLU
the loss's gradient wrt the pre-activations is zero wherever a latent is inactive, so the decoder
forward, its two backward products and the encoder weight gradient are sums over the active
latents of each row (k or L0), not over d_sae. Each loss here is its variant's loss in
`losses.LOSSES` evaluated on the active (row, latent) entries only, with the same value and
gradients up to float32 summation order (tests/test_sae_sparse.py checks every variant):

  TopK family   the k selected entries per row (topk) or the k·B of the batch (batchtopk
                variants): always sparse
  ReLU variants (anthropic_2024, towards_2023, jl, matryoshka) and jumprelu: the C largest
                pre-activations per row, which hold every active latent when no row has more
                than C. C is the smallest rung of a ladder (8, 16, 32, ... up to the capacity)
                that the batch's busiest row fits; a batch that fits none takes the dense loss
                (step.loss_and_grads: a lax.switch, only the branch taken runs), so the step is
                exact either way and its cost follows the batch's largest L0

Every loss takes the train step's pre-activations pre_BF (computed once, without gradient) and
reads them through encoder_grad.attach_rows / attach_pairs. Instead of dense activations f_BF, aux
carries the sparse "code" (values, latents) the step's L0/L1 and dead-latent counters read.

Shape letters: B rows, D input width, F latents, K entries kept per row (k, or the capacity C),
S entries of a batch-wide selection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from monosem_jax.sae import encoder_grad, losses, model, shard_select
from monosem_jax.sae.model import HParams, Params, SAEConfig

# The variants whose number of active latents per row varies (capacity + dense fallback).
RELU_VARIANTS = frozenset({"anthropic_2024", "towards_2023", "jl", "matryoshka"})
VARIABLE_ACTIVE = RELU_VARIANTS | {"jumprelu"}


# cfg.sparse_capacity = -1 (automatic): d_sae / AUTO_CAPACITY_DIVISOR. The sparse ReLU step's work
# grows with C·B·d and the dense products' with F·B·d, and on a 2-core CPU they cost the same at
# about C = F/128 (d 256, F 4096: the C = 32 rung 241 ms/step, the dense step 230; BUILD.md,
# "Sparse SAE steps").
AUTO_CAPACITY_DIVISOR = 128
SMALLEST_RUNG = 8


def capacity(cfg: SAEConfig) -> int:
    """The largest per-row capacity C of the ReLU variants' sparse step (0: dense only)."""
    if cfg.sparse_capacity < 0:  # below the smallest rung the ladder would be too short to pay
        auto = cfg.d_sae // AUTO_CAPACITY_DIVISOR
        return auto if auto >= SMALLEST_RUNG else 0
    return min(cfg.sparse_capacity, cfg.d_sae)


def capacities(cfg: SAEConfig) -> tuple[int, ...]:
    """The ladder of capacities, doubling from SMALLEST_RUNG up to `capacity(cfg)`."""
    top, rungs = capacity(cfg), []
    rung = SMALLEST_RUNG
    while rung < top:
        rungs.append(rung)
        rung *= 2
    return tuple(rungs + [top]) if top > 0 else ()


def uses_sparse_step(cfg: SAEConfig) -> bool:
    """Whether step.train_step takes this module's losses (else the dense one, always): a capacity
    of d_sae would only add a full top_k to the dense step."""
    if cfg.variant in VARIABLE_ACTIVE:
        return 0 < capacity(cfg) < cfg.d_sae
    return cfg.sparse_capacity != 0 and cfg.variant in SPARSE_LOSSES


def _active_margin(cfg: SAEConfig, params: Params, pre_BF: jax.Array) -> jax.Array:
    """> 0 exactly on the entries whose gradient can be nonzero: z > 0 (ReLU), or for jumprelu
    z > θ − ε: the active latents and those within the STE band below θ (whose θ-gradient the
    rectangle kernel makes nonzero; one full ε rather than ε/2, so rounding cannot drop one)."""
    if cfg.variant != "jumprelu":
        return pre_BF
    theta_F = jnp.exp(params["log_threshold_F"])
    return pre_BF - (theta_F - cfg.jumprelu_bandwidth)[None]


def active_counts(cfg: SAEConfig, params: Params, pre_BF: jax.Array) -> jax.Array:
    """Per row [B] (float32), the entries that can carry gradient (`_active_margin` > 0)."""
    # sign(max(m, 0)) is 1 where m > 0, else 0: the same count as sum(m > 0), and about twice as
    # fast on CPU (a float reduction vectorises; compare-and-convert does not). A NaN row
    # counts NaN, which fits no rung (the dense step then runs, and the loop's NaN check
    # reports it).
    return jnp.sum(jnp.sign(jnp.maximum(_active_margin(cfg, params, pre_BF), 0.0)), axis=1)


def rung(cfg: SAEConfig, active_B: jax.Array) -> jax.Array:
    """Index into `capacities(cfg)` of the smallest capacity the busiest row fits (counts from
    `active_counts`); len(capacities(cfg)): none, the dense step."""
    fits_A = jnp.asarray(capacities(cfg), jnp.float32) >= jnp.max(active_B)
    return jnp.where(jnp.any(fits_A), jnp.argmax(fits_A), len(fits_A)).astype(jnp.int32)


def _active_rows(cfg: SAEConfig, params: Params, pre_BF: jax.Array, num_c: int) -> jax.Array:
    """The num_c entries per row [B, C] of largest margin: all active ones when the rung fits."""
    return shard_select.latent_top_k(_active_margin(cfg, params, pre_BF), num_c)[1]


def _read_rows(cfg: SAEConfig, params: Params, x_BD, pre_BF, idx_BK) -> jax.Array:
    bias_F = model.encoder_bias(params, cfg.variant in model.PRE_ENCODER_BIAS)
    return encoder_grad.attach_rows(pre_BF, x_BD, params["w_enc_DF"], bias_F, idx_BK)


def _code(vals, latents) -> tuple[jax.Array, jax.Array]:
    """The sparse code the step's statistics read: (values, latents), flat, without gradient."""
    return jax.lax.stop_gradient(vals).reshape(-1), latents.reshape(-1)


def _relu_rows(cfg: SAEConfig, params: Params, x_BD, pre_BF, num_c: int):
    """(latents [B, C], ReLU'd differentiable activations [B, C]) of the C largest entries per
    row: 0 past a row's active latents."""
    idx_BK = _active_rows(cfg, params, pre_BF, num_c)
    return idx_BK, jax.nn.relu(_read_rows(cfg, params, x_BD, pre_BF, idx_BK))


def _decoder_weighted_l1(params: Params, f_BK, idx_BK) -> jax.Array:
    """losses.decoder_weighted_l1 of a per-row sparse code."""
    return jnp.sum(f_BK * model.decoder_norms(params)[idx_BK]) / f_BK.shape[0]


def loss_relu(params: Params, x_BD: jax.Array, hp: HParams, dead_F: jax.Array, cfg: SAEConfig,
              pre_BF: jax.Array, num_c: int):
    """anthropic_2024, towards_2023 and jl (losses.loss_<variant>) on the C largest entries."""
    del dead_F
    x_BD = x_BD.astype(jnp.float32)
    idx_BK, f_BK = _relu_rows(cfg, params, x_BD, pre_BF, num_c)
    xhat_BD = model.decode_sparse(params, f_BK, idx_BK)
    mse = losses.reconstruction_mse(x_BD, xhat_BD)
    if cfg.variant == "towards_2023":  # unit-norm decoder rows: the plain L1
        l1 = jnp.sum(f_BK) / x_BD.shape[0]
    else:  # Anthropic 2024: each activation weighted by its decoder row's norm
        l1 = _decoder_weighted_l1(params, f_BK, idx_BK)
    loss = mse + hp["l1_coef"] * l1
    aux = {"code": _code(f_BK, idx_BK), "xhat_BD": xhat_BD, "mse": mse, "l1": l1}
    if cfg.variant == "jl":
        jl = losses.jl_penalty(params["w_dec_FD"])
        loss, aux = loss + hp["jl_coef"] * jl, {**aux, "jl": jl}
    return loss, aux


def loss_matryoshka(params: Params, x_BD: jax.Array, hp: HParams, dead_F: jax.Array,
                    cfg: SAEConfig, pre_BF: jax.Array, num_c: int):
    """losses.loss_matryoshka on the C largest entries: each prefix decodes its own latents."""
    del dead_F
    x_BD = x_BD.astype(jnp.float32)
    idx_BK, f_BK = _relu_rows(cfg, params, x_BD, pre_BF, num_c)
    w_BKD = params["w_dec_FD"][idx_BK]  # gathered once, read by every prefix
    xhat_BD = jnp.broadcast_to(params["b_dec_D"][None], x_BD.shape)
    mses, start = [], 0
    for end in cfg.prefixes:
        chunk_BK = (idx_BK >= start) & (idx_BK < end)
        xhat_BD = xhat_BD + jnp.einsum("bk,bkd->bd", jnp.where(chunk_BK, f_BK, 0.0), w_BKD)
        mses.append(losses.reconstruction_mse(x_BD, xhat_BD))
        start = end
    l1 = _decoder_weighted_l1(params, f_BK, idx_BK)
    loss = sum(mses) / len(mses) + hp["l1_coef"] * l1
    aux = {"code": _code(f_BK, idx_BK), "xhat_BD": xhat_BD, "mse": mses[-1], "l1": l1}
    aux.update({f"mse_prefix{i}": m for i, m in enumerate(mses[:-1])})
    return loss, aux


def loss_jumprelu(params: Params, x_BD: jax.Array, hp: HParams, dead_F: jax.Array,
                  cfg: SAEConfig, pre_BF: jax.Array, num_c: int):
    """losses.loss_jumprelu on the C entries of largest z − θ (the active ones and the band)."""
    del dead_F
    x_BD = x_BD.astype(jnp.float32)
    idx_BK = _active_rows(cfg, params, pre_BF, num_c)
    z_BK = _read_rows(cfg, params, x_BD, pre_BF, idx_BK)
    theta_F = jnp.exp(params["log_threshold_F"])
    theta_BK = theta_F[idx_BK]  # its gradient scatter-adds back into θ's [F]
    f_BK = losses.jumprelu(z_BK, theta_BK, cfg.jumprelu_bandwidth)
    xhat_BD = model.decode_sparse(params, f_BK, idx_BK)
    mse = losses.reconstruction_mse(x_BD, xhat_BD)
    # Entries outside the selection lie below θ − ε: H = 0 and a zero kernel there.
    l0 = jnp.sum(losses.heaviside(z_BK, theta_BK, cfg.jumprelu_bandwidth)) / x_BD.shape[0]
    aux = {"code": _code(f_BK, idx_BK), "xhat_BD": xhat_BD, "mse": mse, "l0": l0}
    return mse + hp["l0_coef"] * l0, aux


def loss_topk(params: Params, x_BD: jax.Array, hp: HParams, dead_F: jax.Array, cfg: SAEConfig,
              pre_BF: jax.Array):
    """losses.loss_topk with the encoder gradient from the k selected entries per row."""
    x_BD = x_BD.astype(jnp.float32)
    _, idx_BK = model.topk_select(pre_BF, cfg.k)
    keep_K = jnp.arange(cfg.k) < hp["k"]  # the traced k <= cfg.k; later entries are 0
    vals_BK = jnp.where(keep_K[None], jax.nn.relu(_read_rows(cfg, params, x_BD, pre_BF, idx_BK)),
                        0.0)
    xhat_BD = model.decode_sparse(params, vals_BK, idx_BK)
    return losses.mse_and_auxk(params, x_BD, losses.auxk_z_fn(cfg, x_BD, pre_BF), xhat_BD,
                               {"code": _code(vals_BK, idx_BK)}, dead_F, hp, cfg)


def _batch_selection(cfg: SAEConfig, params: Params, x_BD, hp: HParams, pre_BF):
    """(differentiable values [S], flat indices [S]) of the batch selection of the k·B largest."""
    _, flat_S = model.batchtopk_select(pre_BF, cfg.k)
    rows_S, cols_S = flat_S // cfg.d_sae, flat_S % cfg.d_sae
    bias_F = model.encoder_bias(params, pre_bias=True)
    z_S = encoder_grad.attach_pairs(pre_BF, x_BD, params["w_enc_DF"], bias_F, rows_S, cols_S)
    keep_S = jnp.arange(flat_S.shape[0]) < x_BD.shape[0] * hp["k"]
    return jnp.where(keep_S, jax.nn.relu(z_S), 0.0), flat_S


def loss_batchtopk(params: Params, x_BD: jax.Array, hp: HParams, dead_F: jax.Array,
                   cfg: SAEConfig, pre_BF: jax.Array):
    """losses.loss_batchtopk with the encoder gradient from the k·B selected entries."""
    x_BD = x_BD.astype(jnp.float32)
    vals_S, flat_S = _batch_selection(cfg, params, x_BD, hp, pre_BF)
    xhat_BD = model.decode_batch_sparse(params, vals_S, flat_S, x_BD.shape[0])
    loss, aux = losses.mse_and_auxk(params, x_BD, losses.auxk_z_fn(cfg, x_BD, pre_BF), xhat_BD,
                                    {"code": _code(vals_S, flat_S % cfg.d_sae)}, dead_F, hp, cfg)
    return loss, {**aux, "min_kept": losses.smallest_kept(vals_S)}


def loss_matryoshka_batchtopk(params: Params, x_BD: jax.Array, hp: HParams, dead_F: jax.Array,
                              cfg: SAEConfig, pre_BF: jax.Array):
    """losses.loss_matryoshka_batchtopk with the encoder gradient from the k·B selected entries."""
    x_BD = x_BD.astype(jnp.float32)
    vals_S, flat_S = _batch_selection(cfg, params, x_BD, hp, pre_BF)
    return losses.matryoshka_batch_loss(params, x_BD, losses.auxk_z_fn(cfg, x_BD, pre_BF),
                                        vals_S, flat_S, {"code": _code(vals_S, flat_S % cfg.d_sae)},
                                        dead_F, hp, cfg)


SPARSE_LOSSES = {
    "anthropic_2024": loss_relu,
    "towards_2023": loss_relu,
    "jl": loss_relu,
    "matryoshka": loss_matryoshka,
    "jumprelu": loss_jumprelu,
    "topk": loss_topk,
    "batchtopk": loss_batchtopk,
    "matryoshka_batchtopk": loss_matryoshka_batchtopk,
}
