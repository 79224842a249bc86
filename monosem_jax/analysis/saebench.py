"""SAEBench's "core" metrics, streamed: sums per batch (jit-able), float64 totals, then finish.

Definitions follow SAEBench 0.6.0 `sae_bench/evals/core/main.py` (commit 8042bb3; "main.py:N"
below) and, where SAEBench's own code is wrong, SAELens 6.54.12 `sae_lens/evals.py`
("evals.py:N"), whose corrected explained variance, MSE, L1 and L0 SAEBench's next release
takes over. Each quantity is either a per-token mean (a sum over the kept tokens divided by
their count) or a ratio of such means; which one is said at each field of `core_finish`.

How our eval differs from SAEBench's, and why:
- Kept positions. SAEBench drops BOS / EOS / pad positions from every metric (`ignore_tokens`,
  main.py:1101-1105, :404-416, :488-536) but splices (by default) and zero-ablates at every
  position (main.py:726-730). Our windows are cut from a flat token stream and have no BOS;
  position 0 is the attention sink the SAE never saw in training, so with `exclude_first` it is
  dropped from every metric and both the splice and the zero-ablation leave it clean.
- Units. SAEBench/SAELens feed the SAE `activation_scaler.scale(x)` and measure input and
  output in the hook's own units (`x̂ = unscale(decode(encode(scale(x))))`, evals.py:530-547):
  so do we (our SAE sees hook activations × norm_scale); `l1` is in the SAE's latent units. The
  flat `mse` of the eval JSON stays in SAE input units (as the SAE stage reports it): it is
  SAEBench's `mse` × norm_scale².
- Latent values are the reported activations f_i·‖W_dec,i‖ (`sae_model.feature_acts`): those of
  the SAE with decoder norms folded in, as SAELens's `fold_W_dec_norm` exports it (f itself for
  unit-norm decoders). L0 and densities do not depend on it.
- Batches. SAEBench runs the reconstruction metrics (KL, CE) and the sparsity / variance
  metrics on different batches (10 and 1 batches of 16 prompts by default); we score every
  metric on the same eval windows, all of them. The batch-level quantities
  (`relative_reconstruction_bias`, a ratio of means per batch averaged over batches,
  main.py:547-551; `explained_variance_legacy`, which centres on the batch mean) use all tokens
  at once and our eval batches respectively.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from monosem_jax.analysis import metrics as m

_HIGHEST = jax.lax.Precision.HIGHEST
L2_FLOOR = 1e-4  # main.py:542: an input norm below this divides the l2 ratio by 1 instead
EV_FLOOR = 1e-10  # evals.py:440: total variance below this gives EV 1 (mse < floor) or 0
COS_CHUNK = 1024  # latents per block of the max-cosine scan: memory [COS_CHUNK, F] floats


def _masked_sum(v_N: jax.Array, keep_N: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(keep_N, v_N, 0.0))


def core_sums(x_BLD: jax.Array, xhat_BLD: jax.Array, f_BLF: jax.Array, mask_BL: jax.Array
              ) -> dict[str, jax.Array]:
    """One batch's reconstruction and sparsity sums for `core_finish` over the kept positions.

    x, x̂ in hook units, f the latents [B, L, F], mask [B, L]. The CE and KL sums come from the
    eval's `metrics.lm_sums` (ce_clean / ce_spliced / ce_zero over "predictions"; kl_sae_kept /
    kl_zero_kept: KL(clean ‖ run), main.py:768-781 / evals.py:787-796, at every kept position,
    the last one too).
    """
    x_ND = x_BLD.reshape(-1, x_BLD.shape[-1]).astype(jnp.float32)
    xhat_ND = xhat_BLD.reshape(x_ND.shape).astype(jnp.float32)
    keep_N = mask_BL.reshape(-1)
    keep_N1 = keep_N[:, None]
    x_ND = jnp.where(keep_N1, x_ND, 0.0)  # masked rows may hold anything: zero them first
    xhat_ND = jnp.where(keep_N1, xhat_ND, 0.0)
    n = jnp.sum(keep_N.astype(jnp.float32))
    norm_in_N = jnp.sqrt(jnp.sum(x_ND * x_ND, axis=1))
    norm_out_N = jnp.sqrt(jnp.sum(xhat_ND * xhat_ND, axis=1))
    dot_N = jnp.sum(x_ND * xhat_ND, axis=1)
    sse_N = jnp.sum(jnp.square(x_ND - xhat_ND), axis=1)
    # explained_variance_legacy (main.py:572-578): centred on this batch's kept tokens' mean.
    mean_D = jnp.sum(x_ND, axis=0) / jnp.maximum(n, 1.0)
    centred_N = jnp.sum(jnp.square(x_ND - mean_D[None]), axis=1)
    # Firings (!= 0, evals.py:587, :633) per context in one pass over [B, L, F]: the per-latent
    # counts, the contexts each fires in, and L0 (their sum, in core_finish) all come from it.
    per_context_BF = jnp.sum(((f_BLF != 0) & mask_BL[..., None]).astype(jnp.float32), axis=1)
    abs_sum_N = jnp.sum(jnp.abs(f_BLF.astype(jnp.float32)), axis=-1).reshape(-1)
    with_floor_N = jnp.where(norm_in_N < L2_FLOOR, 1.0, norm_in_N)
    cos_denom_N = norm_in_N * norm_out_N
    return {
        "sb_n": n,
        "sb_l2_in": jnp.sum(norm_in_N),  # masked rows are 0 already
        "sb_l2_out": jnp.sum(norm_out_N),
        "sb_l2_ratio": _masked_sum(norm_out_N / with_floor_N, keep_N),
        "sb_xhat_sq": jnp.sum(norm_out_N * norm_out_N),
        "sb_x_dot_xhat": jnp.sum(dot_N),
        "sb_cossim": _masked_sum(dot_N / jnp.where(cos_denom_N > 0, cos_denom_N, 1.0), keep_N),
        "sb_sse": jnp.sum(sse_N),
        "sb_sum_sq": jnp.sum(norm_in_N * norm_in_N),
        "sb_sum_x_D": jnp.sum(x_ND, axis=0),
        "sb_ev_legacy": _masked_sum(1.0 - sse_N / centred_N, keep_N),
        "sb_l1": _masked_sum(abs_sum_N, keep_N),
        "sb_fires_F": jnp.sum(per_context_BF, axis=0),
        # Contexts in which each latent fires at least once (the consistent-activation heuristic).
        "sb_contexts_F": jnp.sum((per_context_BF > 0).astype(jnp.float32), axis=0),
    }


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b != 0 else math.nan


def density_summary(density_F: np.ndarray) -> dict[str, float]:
    """SAEBench's summary fractions of the per-latent densities (main.py:926-966)."""
    total = float(density_F.sum())
    return {
        "frac_alive": float(np.mean(density_F > 0)),
        "freq_over_1_percent": float(np.mean(density_F > 0.01)),
        "freq_over_10_percent": float(np.mean(density_F > 0.1)),
        # The share of all firings that the >1% / >10% latents take (0 when nothing fires).
        "normalized_freq_over_1_percent": float(density_F[density_F > 0.01].sum() / total)
        if total > 0 else 0.0,
        "normalized_freq_over_10_percent": float(density_F[density_F > 0.1].sum() / total)
        if total > 0 else 0.0,
    }


def core_finish(totals: dict, contexts: int, context_len: int, weights: dict | None = None
                ) -> tuple[dict, dict[str, np.ndarray]]:
    """SAEBench's nested "core" metrics and its per-latent arrays, from float64 totals.

    `weights` (`weight_metrics`) adds the cosine-similarity fields to misc_metrics.
    """
    n, preds = totals["sb_n"], totals["predictions"]
    kl_sae, kl_zero = totals["kl_sae_kept"] / n, totals["kl_zero_kept"] / n
    ce_clean, ce_sae, ce_zero = (totals[k] / preds for k in ("ce_clean", "ce_spliced", "ce_zero"))
    # Corrected EV (evals.py:396-442): 1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²), hook units.
    mse = totals["sb_sse"] / n
    mean_D = totals["sb_sum_x_D"] / n
    total_var = totals["sb_sum_sq"] / n - float(mean_D @ mean_D)
    if total_var < EV_FLOOR:
        ev = 1.0 if mse < EV_FLOOR else 0.0
    else:
        ev = 1.0 - mse / total_var
    density_F = totals["sb_fires_F"] / n  # evals.py:653 (main.py:631)
    with np.errstate(divide="ignore", invalid="ignore"):  # never-firing latents: NaN, as SAEBench
        cah_F = totals["sb_fires_F"] / totals["sb_contexts_F"]  # main.py:632-634
    misc = density_summary(density_F)
    per_latent = {"feature_density_F": density_F, "consistent_activation_heuristic_F": cah_F}
    if weights is not None:
        misc["average_max_encoder_cosine_sim"] = float(np.mean(weights["max_encoder_cosine_sim_F"]))
        misc["average_max_decoder_cosine_sim"] = float(np.mean(weights["max_decoder_cosine_sim_F"]))
        per_latent.update(weights)
    core = {
        "model_behavior_preservation": {  # main.py:777-781, :424-427 (means over kept positions)
            "kl_div_score": _ratio(kl_zero - kl_sae, kl_zero),
            "kl_div_with_ablation": kl_zero,
            "kl_div_with_sae": kl_sae,
        },
        "model_performance_preservation": {  # main.py:783-786, :429-432 (means over predictions)
            "ce_loss_score": m.ce_loss_recovered(ce_clean, ce_sae, ce_zero),
            "ce_loss_with_ablation": ce_zero,
            "ce_loss_with_sae": ce_sae,
            "ce_loss_without_sae": ce_clean,
        },
        "reconstruction_quality": {
            "explained_variance": ev,
            "explained_variance_legacy": totals["sb_ev_legacy"] / n,  # per-token mean (:577)
            "mse": mse,  # per-token Σ_d (x − x̂)², mean over tokens (evals.py:596-623)
            "cossim": totals["sb_cossim"] / n,  # per-token mean (main.py:592-598)
        },
        "shrinkage": {  # per-token means (main.py:539-543) and a ratio of means (:547-551)
            "l2_norm_in": totals["sb_l2_in"] / n,
            "l2_norm_out": totals["sb_l2_out"] / n,
            "l2_ratio": totals["sb_l2_ratio"] / n,
            "relative_reconstruction_bias": _ratio(totals["sb_xhat_sq"], totals["sb_x_dot_xhat"]),
        },
        "sparsity": {  # per-token means (evals.py:587-593: != 0 and Σ|f|)
            "l0": float(np.sum(totals["sb_fires_F"])) / n,
            "l1": totals["sb_l1"] / n,
        },
        "token_stats": {  # main.py:266-281: every position of the batches run
            "total_tokens_eval_reconstruction": contexts * context_len,
            "total_tokens_eval_sparsity_variance": contexts * context_len,
        },
        "misc_metrics": misc,
    }
    return json_safe(core), per_latent


def json_safe(tree):
    """Nested dicts of plain floats / ints, NaN and ±inf as None (as the eval JSON writes them)."""
    if isinstance(tree, dict):
        return {k: json_safe(v) for k, v in tree.items()}
    if isinstance(tree, (np.integer, int)) and not isinstance(tree, bool):
        return int(tree)
    value = float(tree)
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------ weight-based per-latent metrics


def _unit_rows(w_AD: jax.Array) -> jax.Array:
    """Rows over max(‖row‖, 1e-12), as torch.nn.functional.normalize (zero rows stay 0)."""
    norms_A = jnp.sqrt(jnp.sum(jnp.square(w_AD), axis=1))
    return w_AD / jnp.maximum(norms_A, 1e-12)[:, None]


@functools.partial(jax.jit, static_argnames="chunk")
def max_cosine_sims(w_FD: jax.Array, chunk: int = COS_CHUNK) -> jax.Array:
    """max_{j≠i} cos(w_i, w_j) [F] over rows, `chunk` rows at a time ([F, F] never held).

    main.py:289-329 (`calculate_max_cosine_sim`, applied to W_dec.T and W_enc at :355-356).
    """
    u_FD = _unit_rows(w_FD.astype(jnp.float32))
    num_f = u_FD.shape[0]
    size = min(chunk, num_f)
    blocks = -(-num_f // size)
    u_XGD = jnp.pad(u_FD, ((0, blocks * size - num_f), (0, 0))).reshape(blocks, size, -1)

    def one_block(args):
        u_GD, start = args
        sims_GF = jnp.dot(u_GD, u_FD.T, precision=_HIGHEST)
        self_GF = (start + jnp.arange(size))[:, None] == jnp.arange(num_f)[None]
        return jnp.max(jnp.where(self_GF, -jnp.inf, sims_GF), axis=1)

    best_XG = jax.lax.map(one_block, (u_XGD, jnp.arange(blocks) * size))
    return best_XG.reshape(-1)[:num_f]


@jax.jit
def _encoder_decoder_cos(w_enc_DF: jax.Array, w_dec_FD: jax.Array) -> jax.Array:
    """cos(W_enc[:, i], W_dec[i]) [F] (main.py:333-353)."""
    return jnp.sum(_unit_rows(w_enc_DF.T) * _unit_rows(w_dec_FD), axis=1)


def weight_metrics(w_enc_DF: np.ndarray, w_dec_FD: np.ndarray) -> dict[str, np.ndarray]:
    """SAEBench's per-latent weight metrics: max decoder / encoder cosine, encoder-decoder cosine.

    Takes host arrays and runs on this process's default device: no collective, no [F, F].
    """
    w_enc_DF, w_dec_FD = np.asarray(w_enc_DF, np.float32), np.asarray(w_dec_FD, np.float32)
    return {
        "max_decoder_cosine_sim_F": np.asarray(max_cosine_sims(w_dec_FD), np.float64),
        "max_encoder_cosine_sim_F": np.asarray(max_cosine_sims(w_enc_DF.T), np.float64),
        "encoder_decoder_cosine_sim_F": np.asarray(_encoder_decoder_cos(w_enc_DF, w_dec_FD),
                                                   np.float64),
    }


def cosine_stats(max_cos_F: np.ndarray) -> dict[str, float]:
    """Summary of the per-latent max decoder cosine: near-duplicate latents sit near 1."""
    return {
        "mean": float(np.mean(max_cos_F)),
        "median": float(np.median(max_cos_F)),
        "p90": float(np.quantile(max_cos_F, 0.9)),
        "max": float(np.max(max_cos_F)),
        "frac_above_0_9": float(np.mean(max_cos_F > 0.9)),
    }
