"""One named loss per SAE variant, plus the pieces only losses need (AuxK, JL, JumpReLU STE).

Every loss has the signature (params, x_BD, hp, dead_F, cfg, pre_BF=None) -> (loss, aux), where hp
holds the *effective* (already scheduled) hyper-parameters, dead_F is the [F] bool mask of dead
latents, pre_BF (optional) the variant's pre-activations already computed by the train step (the
loss then reads them through encoder_grad.attach_dense instead of redoing the product) and aux
holds "f_BF", "xhat_BD", "mse" and the variant's penalty terms by name (batchtopk variants add
"min_kept", the sample their threshold averages). mse is the mean over the batch of the squared
error summed over d (the papers' ‖x − x̂‖²). sae/sparse.py has the same losses over the active
latents only.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from monosem_jax.sae import encoder_grad, model, shard_select
from monosem_jax.sae.model import HParams, Params, SAEConfig

Aux = dict[str, jax.Array]
# atanh(|cos|) is clipped at |cos| = 1 − eps: finite value and gradient for (near-)duplicates.
JL_COS_EPS = 1e-6


def reconstruction_mse(x_BD: jax.Array, xhat_BD: jax.Array) -> jax.Array:
    """mean over rows of ‖x − x̂‖² (summed over d): every loss's reconstruction term."""
    return jnp.mean(jnp.sum(jnp.square(x_BD - xhat_BD), axis=1))


def variant_preacts(cfg: SAEConfig, params: Params, x_BD: jax.Array,
                    pre_BF: jax.Array | None) -> jax.Array:
    """The variant's pre-activations [B, F], differentiable: computed here, or the train step's
    `pre_BF` with the dense encoder gradient attached."""
    if pre_BF is None:
        return model.variant_preacts(cfg, params, x_BD)
    bias_F = model.encoder_bias(params, cfg.variant in model.PRE_ENCODER_BIAS)
    return encoder_grad.attach_dense(pre_BF, x_BD, params["w_enc_DF"], bias_F)


def decoder_weighted_l1(f_BF: jax.Array, n_F: jax.Array) -> jax.Array:
    """mean_b Σ_i f_i ‖W_dec,i‖ (f >= 0), reduced over the batch first: no [B,F] product kept."""
    return jnp.dot(jnp.sum(f_BF, axis=0), n_F) / f_BF.shape[0]


def loss_anthropic_2024(
    params: Params, x_BD: jax.Array, hp: HParams, dead_F: jax.Array, cfg: SAEConfig,
    pre_BF: jax.Array | None = None,
) -> tuple[jax.Array, Aux]:
    """mean ‖x − x̂‖² + λ mean Σ_i f_i ‖W_dec,i‖ with f = ReLU(W_enc x + b_enc), no pre-bias."""
    del dead_F
    x_BD = x_BD.astype(jnp.float32)
    f_BF = jax.nn.relu(variant_preacts(cfg, params, x_BD, pre_BF))
    xhat_BD = model.decode(params, f_BF)
    mse = reconstruction_mse(x_BD, xhat_BD)
    l1 = decoder_weighted_l1(f_BF, model.decoder_norms(params))
    return mse + hp["l1_coef"] * l1, {"f_BF": f_BF, "xhat_BD": xhat_BD, "mse": mse, "l1": l1}


def auxk_activation(z_BF: jax.Array, dead_F: jax.Array, k_aux: int) -> jax.Array:
    """ReLU of the top-k_aux pre-activations among dead latents; live latents never selected."""
    # Live latents get −inf (SAELens topk_sae._calculate_topk_aux_acts); if fewer than k_aux are
    # dead, the extra picks are −inf and ReLU makes them 0.
    masked_BF = jnp.where(dead_F[None], z_BF, -jnp.inf)
    vals_BK, idx_BK = shard_select.latent_top_k(masked_BF, k_aux)
    return model.scatter_topk(z_BF, jax.nn.relu(vals_BK), idx_BK)


def auxk_loss(
    params: Params, z_BF: jax.Array, e_BD: jax.Array, dead_F: jax.Array, k_aux: int
) -> jax.Array:
    """‖ê − e‖² / ‖e − ē‖² summed over the batch: the dead latents' fit of the residual e."""
    # Normalisation as OpenAI's normalized_mse (train.py main(): target x − x̂ + b_pre against a
    # reconstruction that also adds b_pre, i.e. W_dec f_aux against e; denominator the batch
    # variance of e; nan_to_num(0)). Its absolute scale matters little: only dead latents get
    # gradient from it, and Adam is per-parameter scale-free.
    ehat_BD = auxk_activation(z_BF, dead_F, k_aux) @ params["w_dec_FD"]  # no b_dec: fits e
    num = jnp.sum(jnp.square(ehat_BD - e_BD))
    den = jnp.sum(jnp.square(e_BD - jnp.mean(e_BD, axis=0)[None]))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


@jax.custom_vjp
def known_grad(params: Params, value: jax.Array, grads: Params) -> jax.Array:
    """`value`, whose gradient wrt params is `grads` (both computed beforehand, gradient-free)."""
    return value


def _known_grad_fwd(params, value, grads):
    return value, grads


def _known_grad_bwd(grads, ct):
    return jax.tree.map(lambda g: ct * g, grads), None, None


known_grad.defvjp(_known_grad_fwd, _known_grad_bwd)


def auxk_z_fn(cfg: SAEConfig, x_BD: jax.Array, z_BF: jax.Array):
    """AuxK's pre-activations as a function of the params: z_BF's value with its dense encoder
    gradient (no second encoder product)."""
    z_BF = jax.lax.stop_gradient(z_BF)
    pre_bias = cfg.variant in model.PRE_ENCODER_BIAS
    return lambda p: encoder_grad.attach_dense(z_BF, x_BD, p["w_enc_DF"],
                                               model.encoder_bias(p, pre_bias))


def auxk_term(
    params: Params, z_fn, x_BD: jax.Array, xhat_BD: jax.Array, dead_F: jax.Array, k_aux: int,
) -> jax.Array:
    """The TopK family's AuxK on the residual stop_grad(x − x̂); 0 while nothing is dead.

    z_fn(params) gives the differentiable pre-activations [B, F] (`auxk_z_fn`)."""
    e_BD = jax.lax.stop_gradient(x_BD - xhat_BD)  # AuxK fits the residual; it does not move it
    params_sg = jax.lax.stop_gradient(params)
    # Skip the extra top_k and [B,F]x[F,D] products while nothing is dead (early training). With
    # no dead latent the term is 0, as SAELens returns (OpenAI's would be a gradient-free const).
    # The branch takes AuxK's value and gradient together and `known_grad` hands the gradient
    # to the step's: differentiating through the cond instead would make the untaken branch
    # fill [B, F] residuals with zeros every step (measured: +60 ms of a 220 ms topk step).
    value, grads = jax.lax.cond(
        jnp.any(dead_F),
        lambda: jax.value_and_grad(
            lambda p: auxk_loss(p, z_fn(p), e_BD, dead_F, k_aux))(params_sg),
        lambda: (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params_sg)),
    )
    return known_grad(params, value, grads)


def loss_topk(
    params: Params, x_BD: jax.Array, hp: HParams, dead_F: jax.Array, cfg: SAEConfig,
    pre_BF: jax.Array | None = None,
) -> tuple[jax.Array, Aux]:
    """mean ‖x − x̂‖² + aux_coef · AuxK, f = ReLU(TopK_k(W_enc (x − b_dec) + b_enc))."""
    x_BD = x_BD.astype(jnp.float32)
    z_BF = variant_preacts(cfg, params, x_BD, pre_BF)
    # Sparse decode: x̂ = Σ_k f_k W_dec[idx_k] + b_dec gathers k decoder rows per row instead of
    # a dense [B,F]x[F,D] product (and its two backward products: the W_dec gradient becomes a
    # scatter-add of B·k rows); same value up to summation order, faster (experiments/README.md,
    # topk_select_study.py). The dense f is kept for the metrics and dead-feature tracking only.
    vals_BK, idx_BK = model.topk_select(z_BF, cfg.k, hp["k"])
    xhat_BD = model.decode_sparse(params, vals_BK, idx_BK)
    f_BF = model.scatter_topk(z_BF, vals_BK, idx_BK)
    return mse_and_auxk(params, x_BD, auxk_z_fn(cfg, x_BD, z_BF), xhat_BD, {"f_BF": f_BF},
                        dead_F, hp, cfg)


def mse_and_auxk(params: Params, x_BD, z_fn, xhat_BD, acts: Aux, dead_F, hp: HParams,
                 cfg: SAEConfig) -> tuple[jax.Array, Aux]:
    """The TopK family's loss from its reconstruction: mse + aux_coef · AuxK. `acts`: the
    activations for metrics and dead-latent tracking ({"f_BF": dense} or a sparse {"code"}),
    passed on without gradient; z_fn as auxk_term's."""
    mse = reconstruction_mse(x_BD, xhat_BD)
    auxk = auxk_term(params, z_fn, x_BD, xhat_BD, dead_F, cfg.k_aux)
    aux = {**jax.lax.stop_gradient(acts), "xhat_BD": xhat_BD, "mse": mse, "auxk": auxk}
    return mse + hp["aux_coef"] * auxk, aux


def smallest_kept(vals_S: jax.Array) -> jax.Array:
    """The smallest positive selected activation (θ's per-batch sample); 0 if none is positive."""
    positive_S = vals_S > 0
    smallest = jnp.min(jnp.where(positive_S, vals_S, jnp.inf))
    return jax.lax.stop_gradient(jnp.where(jnp.any(positive_S), smallest, 0.0))


def loss_batchtopk(
    params: Params, x_BD: jax.Array, hp: HParams, dead_F: jax.Array, cfg: SAEConfig,
    pre_BF: jax.Array | None = None,
) -> tuple[jax.Array, Aux]:
    """mean ‖x − x̂‖² + aux_coef · AuxK, f = the k·B largest of ReLU(W_enc (x − b_dec) + b_enc)."""
    # Bussmann et al. 2024 (BatchTopK SAEs; dictionary_learning batch_top_k.py, SAELens
    # batchtopk_sae.py): topk's encoder, init, unit-norm decoder and AuxK, with the selection
    # taken over the whole batch. aux["min_kept"] is the batch's sample for the inference
    # threshold θ, which step.train_step averages (the loss does not read θ).
    x_BD = x_BD.astype(jnp.float32)
    z_BF = variant_preacts(cfg, params, x_BD, pre_BF)
    vals_S, flat_S = model.batchtopk_select(z_BF, cfg.k, hp["k"])
    xhat_BD = model.decode_batch_sparse(params, vals_S, flat_S, x_BD.shape[0])
    f_BF = model.scatter_batchtopk(z_BF, vals_S, flat_S)
    loss, aux = mse_and_auxk(params, x_BD, auxk_z_fn(cfg, x_BD, z_BF), xhat_BD, {"f_BF": f_BF},
                             dead_F, hp, cfg)
    return loss, {**aux, "min_kept": smallest_kept(vals_S)}


def loss_towards_2023(
    params: Params, x_BD: jax.Array, hp: HParams, dead_F: jax.Array, cfg: SAEConfig,
    pre_BF: jax.Array | None = None,
) -> tuple[jax.Array, Aux]:
    """mean ‖x − x̂‖² + λ mean Σ|f|, f = ReLU(W_enc (x − b_dec) + b_enc), unit-norm decoder rows."""
    del dead_F
    x_BD = x_BD.astype(jnp.float32)
    f_BF = jax.nn.relu(variant_preacts(cfg, params, x_BD, pre_BF))
    xhat_BD = model.decode(params, f_BF)
    mse = reconstruction_mse(x_BD, xhat_BD)
    l1 = jnp.sum(f_BF) / f_BF.shape[0]  # f >= 0 after ReLU, so |f| = f
    return mse + hp["l1_coef"] * l1, {"f_BF": f_BF, "xhat_BD": xhat_BD, "mse": mse, "l1": l1}


def jl_penalty(w_FD: jax.Array) -> jax.Array:
    """Mean over pairs i < j of atanh(|cos(w_i, w_j)|), |cos| clipped below 1 − JL_COS_EPS."""
    # The only F×F work in the package. axu930/gpt_sae loss.py JL_loss: atanh(|W Wᵀ|) over
    # unit-norm dictionary vectors, averaged over all F² entries (zero diagonal) × √d. We average
    # over the F(F−1)/2 distinct pairs instead (independent of F) and leave √d to the coefficient.
    num_f = w_FD.shape[0]
    u_FD = model.unit_rows(w_FD)
    cos_FF = u_FD @ u_FD.T
    upper_FF = jnp.arange(num_f)[:, None] < jnp.arange(num_f)[None, :]
    atanh_FF = jnp.arctanh(jnp.clip(jnp.abs(cos_FF), 0.0, 1.0 - JL_COS_EPS))
    pairs = max(num_f * (num_f - 1) // 2, 1)
    return jnp.sum(jnp.where(upper_FF, atanh_FF, 0.0)) / pairs


def loss_jl(
    params: Params, x_BD: jax.Array, hp: HParams, dead_F: jax.Array, cfg: SAEConfig,
    pre_BF: jax.Array | None = None,
) -> tuple[jax.Array, Aux]:
    """anthropic_2024's loss + jl_coef · JL penalty over the decoder (dictionary) directions."""
    # axu930/gpt_sae applies the penalty to dec.weight.T, the unit-norm dictionary vectors
    # (its code calls them "w_enc"); we take the same directions, normalised explicitly because
    # this variant's decoder norms are free. Its "jl" loss has no L1 term and its "hybrid" adds
    # one: here that is l1_coef (default 0 for jl, see step.default_hparams).
    loss, aux = loss_anthropic_2024(params, x_BD, hp, dead_F, cfg, pre_BF)
    jl = jl_penalty(params["w_dec_FD"])
    return loss + hp["jl_coef"] * jl, {**aux, "jl": jl}


def _rectangle(u: jax.Array) -> jax.Array:
    """K(u) = 1 on (−½, ½), else 0: the STE kernel of Rajamanoharan et al. 2024."""
    return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


def _lead(theta: jax.Array, z: jax.Array) -> jax.Array:
    """θ with leading unit axes up to z's rank (θ [F] against z [B, F] becomes [1, F])."""
    return theta.reshape((1,) * (z.ndim - theta.ndim) + theta.shape)


def _sum_to(g: jax.Array, theta: jax.Array) -> jax.Array:
    """g summed over the leading axes θ was broadcast along (θ [F] against z [B, F]; none when θ
    has z's shape, as the sparse step's θ[idx] [B, K])."""
    return jnp.sum(g, axis=tuple(range(g.ndim - theta.ndim)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(z: jax.Array, theta: jax.Array, bandwidth: float) -> jax.Array:
    """z · H(z − θ); pseudo-gradient wrt θ: −(θ/ε) K((z − θ)/ε) (Gemma Scope STE).

    θ broadcasts against z: [F] per latent for z [B, F], or z's own shape."""
    return jnp.where(z > _lead(theta, z), z, 0.0)


def _jumprelu_fwd(z, theta, bandwidth):
    return jumprelu(z, theta, bandwidth), (z, theta)


def _jumprelu_bwd(bandwidth, res, g):
    z, theta = res
    theta_z = _lead(theta, z)
    # No STE on z: its gradient is that of z·H(z − θ) away from the jump (SAELens JumpReLU).
    dz = jnp.where(z > theta_z, g, 0.0)
    kernel = _rectangle((z - theta_z) / bandwidth)
    return dz, _sum_to(-(theta_z / bandwidth) * kernel * g, theta)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def heaviside(z: jax.Array, theta: jax.Array, bandwidth: float) -> jax.Array:
    """H(z − θ); pseudo-gradient wrt θ: −(1/ε) K((z − θ)/ε), none wrt z (θ as in `jumprelu`)."""
    return (z > _lead(theta, z)).astype(z.dtype)


def _heaviside_fwd(z, theta, bandwidth):
    return heaviside(z, theta, bandwidth), (z, theta)


def _heaviside_bwd(bandwidth, res, g):
    z, theta = res
    kernel = _rectangle((z - _lead(theta, z)) / bandwidth)
    return jnp.zeros_like(z), _sum_to(-(1.0 / bandwidth) * kernel * g, theta)


heaviside.defvjp(_heaviside_fwd, _heaviside_bwd)


def loss_jumprelu(
    params: Params, x_BD: jax.Array, hp: HParams, dead_F: jax.Array, cfg: SAEConfig,
    pre_BF: jax.Array | None = None,
) -> tuple[jax.Array, Aux]:
    """mean ‖x − x̂‖² + l0_coef · mean L0, f = JumpReLU_θ(W_enc x + b_enc), θ = exp(log θ)."""
    del dead_F
    x_BD = x_BD.astype(jnp.float32)
    z_BF = variant_preacts(cfg, params, x_BD, pre_BF)
    theta_F = jnp.exp(params["log_threshold_F"])
    f_BF = jumprelu(z_BF, theta_F, cfg.jumprelu_bandwidth)
    xhat_BD = model.decode(params, f_BF)
    mse = reconstruction_mse(x_BD, xhat_BD)
    # L0 from H(z − θ) on the pre-activations, as SAELens (Step on hidden_pre): the kernel then
    # sees z on both sides of θ. (The JumpReLU paper's pseudo-code applies it to f instead.)
    l0 = jnp.sum(heaviside(z_BF, theta_F, cfg.jumprelu_bandwidth)) / x_BD.shape[0]
    loss = mse + hp["l0_coef"] * l0
    return loss, {"f_BF": f_BF, "xhat_BD": xhat_BD, "mse": mse, "l0": l0}


def loss_matryoshka(
    params: Params, x_BD: jax.Array, hp: HParams, dead_F: jax.Array, cfg: SAEConfig,
    pre_BF: jax.Array | None = None,
) -> tuple[jax.Array, Aux]:
    """mean over prefixes m of ‖x − x̂_m‖² + λ mean Σ_i f_i ‖W_dec,i‖, x̂_m from f[:, :m] only."""
    # Bussmann et al. 2025 (Matryoshka SAEs; also Nabeshima 2024): each nested prefix of the
    # dictionary must reconstruct x alone, so early latents keep broad concepts instead of
    # splitting them among later, narrower ones. Equal prefix weights; the L1 is taken once
    # over all latents; encoder, penalty and init are anthropic_2024's. x̂_m = x̂_{m'} + the next
    # chunk's product, so the prefix reconstructions together cost one decode, not |P|.
    del dead_F
    x_BD = x_BD.astype(jnp.float32)
    f_BF = jax.nn.relu(variant_preacts(cfg, params, x_BD, pre_BF))
    xhat_BD = jnp.broadcast_to(params["b_dec_D"][None], x_BD.shape)
    mses, start = [], 0
    for end in cfg.prefixes:
        xhat_BD = xhat_BD + f_BF[:, start:end] @ params["w_dec_FD"][start:end]
        mses.append(reconstruction_mse(x_BD, xhat_BD))
        start = end
    l1 = decoder_weighted_l1(f_BF, model.decoder_norms(params))
    loss = sum(mses) / len(mses) + hp["l1_coef"] * l1
    # mse is the full dictionary's (comparable with the other variants); mse_prefix<i> that of
    # the first cfg.prefixes[i] latents.
    aux = {"f_BF": f_BF, "xhat_BD": xhat_BD, "mse": mses[-1], "l1": l1}
    aux.update({f"mse_prefix{i}": m for i, m in enumerate(mses[:-1])})
    return loss, aux


def loss_matryoshka_batchtopk(
    params: Params, x_BD: jax.Array, hp: HParams, dead_F: jax.Array, cfg: SAEConfig,
    pre_BF: jax.Array | None = None,
) -> tuple[jax.Array, Aux]:
    """mean over prefixes m of ‖x − x̂_m‖² + aux_coef · AuxK; BatchTopK f, x̂_m from f[:, :m]."""
    # dictionary_learning matryoshka_batch_top_k.py (Bussmann et al. 2025): the batch selection
    # over all latents, then loss_matryoshka's nested-prefix reconstruction (equal weights,
    # cumulative chunks) instead of an L1; AuxK fits the full dictionary's residual.
    x_BD = x_BD.astype(jnp.float32)
    z_BF = variant_preacts(cfg, params, x_BD, pre_BF)
    vals_S, flat_S = model.batchtopk_select(z_BF, cfg.k, hp["k"])
    f_BF = model.scatter_batchtopk(z_BF, vals_S, flat_S)
    return matryoshka_batch_loss(params, x_BD, auxk_z_fn(cfg, x_BD, z_BF), vals_S, flat_S,
                                 {"f_BF": f_BF}, dead_F, hp, cfg)


def matryoshka_batch_loss(params: Params, x_BD, z_fn, vals_S, flat_S, acts: Aux, dead_F,
                          hp: HParams, cfg: SAEConfig) -> tuple[jax.Array, Aux]:
    """matryoshka_batchtopk's loss from its batch selection (z_fn, acts as mse_and_auxk's)."""
    num_b = x_BD.shape[0]
    rows_S, cols_S, terms_SD = model.batch_sparse_terms(params, vals_S, flat_S)
    xhat_BD = jnp.broadcast_to(params["b_dec_D"][None], x_BD.shape)
    mses, start = [], 0
    for end in cfg.prefixes:
        chunk_S = (cols_S >= start) & (cols_S < end)
        xhat_BD = xhat_BD + jax.ops.segment_sum(jnp.where(chunk_S[:, None], terms_SD, 0.0),
                                                rows_S, num_segments=num_b)
        mses.append(reconstruction_mse(x_BD, xhat_BD))
        start = end
    auxk = auxk_term(params, z_fn, x_BD, xhat_BD, dead_F, cfg.k_aux)
    loss = sum(mses) / len(mses) + hp["aux_coef"] * auxk
    aux = {**jax.lax.stop_gradient(acts), "xhat_BD": xhat_BD, "mse": mses[-1], "auxk": auxk,
           "min_kept": smallest_kept(vals_S)}
    aux.update({f"mse_prefix{i}": m for i, m in enumerate(mses[:-1])})
    return loss, aux


LOSSES = {
    "anthropic_2024": loss_anthropic_2024,
    "topk": loss_topk,
    "towards_2023": loss_towards_2023,
    "jl": loss_jl,
    "jumprelu": loss_jumprelu,
    "matryoshka": loss_matryoshka,
    "batchtopk": loss_batchtopk,
    "matryoshka_batchtopk": loss_matryoshka_batchtopk,
}


def _topk_lr(cfg: SAEConfig) -> dict:
    # Gao et al. fig. 3 / dictionary_learning (top_k, batch_top_k, matryoshka_batch_top_k):
    # 2e-4 / √(F / 2^14).
    return {"lr": 2e-4 / math.sqrt(cfg.d_sae / 2**14)}


# Each variant's hyper-parameter defaults (functions of its shape), from the reference
# implementations; step.default_hparams lays them over the registry's base values.
VARIANT_HPARAMS = {
    # Anthropic's April 2024 update: lr 5e-5, λ = 5.
    "anthropic_2024": lambda cfg: {"lr": 5e-5, "l1_coef": 5.0},
    "topk": _topk_lr,
    # Unit-norm decoder: λ means the same as for anthropic_2024.
    "towards_2023": lambda cfg: {"lr": 1e-4, "l1_coef": 5.0},
    # gpt_sae: lr 1e-4, final coefficient c = 0.5 on mean(e²) + c·√d·mean_{F²} atanh|cos|; in
    # our units (mse summed over d, penalty averaged over pairs) that is 0.5·d^1.5·(F−1)/F.
    "jl": lambda cfg: {"lr": 1e-4, "jl_coef": 0.5 * cfg.d**1.5 * (cfg.d_sae - 1) / cfg.d_sae},
    # dictionary_learning's JumpReLU lr 7e-5; λ ~ 1e-3 for inputs with E‖x‖² = 1 scales to
    # 1e-3·d for our E‖x‖² = d. A starting point only: sweep it.
    "jumprelu": lambda cfg: {"lr": 7e-5, "l0_coef": 1e-3 * cfg.d},
    # Anthropic's lr; λ = 0.5, not 5: the prefix terms already crowd features into the early
    # latents, and λ = 5 collapsed it (BUILD.md "SAE math" has the λ sweep).
    "matryoshka": lambda cfg: {"lr": 5e-5, "l1_coef": 0.5},
    "batchtopk": _topk_lr,
    "matryoshka_batchtopk": _topk_lr,
}
