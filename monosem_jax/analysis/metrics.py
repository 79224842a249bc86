"""Pure metric functions of the SAE evaluation: CE recovered, KL, streamed correlations, F1.

Everything that sees a chunk of tokens is a jit-able jnp function returning float32 sums over
the chunk's masked positions; the host adds chunks up in float64 (`accumulate`) and `*_finish`
functions turn totals into metrics, so no [tokens, units] matrix is ever held for all tokens.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 on GPUs: these sums feed float64 statistics


def ce_loss_recovered(clean: float, spliced: float, zero: float) -> float:
    """(L_zero − L_spliced) / (L_zero − L_clean): 1 = the splice costs nothing, 0 = as zero."""
    gap = zero - clean
    return (zero - spliced) / gap if gap != 0 else math.nan


def nll_from_logp(logp_BLV: jax.Array, targets_BL: jax.Array) -> jax.Array:
    """Next-token cross-entropy [B, L] (nats) of log-probabilities and their targets."""
    return -jnp.take_along_axis(logp_BLV, targets_BL[..., None], axis=-1)[..., 0]


def kl_from_logp(logp_BLV: jax.Array, logq_BLV: jax.Array) -> jax.Array:
    """KL(p ‖ q) [B, L] per position of two log-probability arrays."""
    return jnp.sum(jnp.exp(logp_BLV) * (logp_BLV - logq_BLV), axis=-1)


def _log_softmax(logits_BLV: jax.Array) -> jax.Array:
    return jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)


def ce_sum(logits_BLV: jax.Array, targets_BL: jax.Array, mask_BL: jax.Array) -> jax.Array:
    """Summed next-token cross-entropy (nats) over the positions where mask is set."""
    return jnp.sum(jnp.where(mask_BL, nll_from_logp(_log_softmax(logits_BLV), targets_BL), 0.0))


def kl_sum(logits_p_BLV: jax.Array, logits_q_BLV: jax.Array, mask_BL: jax.Array) -> jax.Array:
    """Summed KL(p ‖ q) of the two next-token distributions over the masked positions."""
    kl_BL = kl_from_logp(_log_softmax(logits_p_BLV), _log_softmax(logits_q_BLV))
    return jnp.sum(jnp.where(mask_BL, kl_BL, 0.0))


def lm_sums(clean_BLV: jax.Array, spliced_BLV: jax.Array, zeroed_BLV: jax.Array,
            tokens_BL: jax.Array, mask_BL: jax.Array) -> dict[str, jax.Array]:
    """CE and KL sums of the clean, spliced and zero-ablated runs; one log-softmax per run.

    Position t predicts token t + 1: CE (and kl_spliced) count the predictions made from kept
    positions ("predictions"); SAEBench's KLs (kl_sae_kept, kl_zero_kept: KL(clean ‖ run)) count
    every kept position, the last one too (saebench.py; its count is sb_n).
    """
    clean, spliced, zeroed = (_log_softmax(a) for a in (clean_BLV, spliced_BLV, zeroed_BLV))
    pred_BL, targets_BL = mask_BL[:, :-1], tokens_BL[:, 1:]

    def ce(logp_BLV):
        return jnp.sum(jnp.where(pred_BL, nll_from_logp(logp_BLV[:, :-1], targets_BL), 0.0))

    kl_sae_BL, kl_zero_BL = kl_from_logp(clean, spliced), kl_from_logp(clean, zeroed)
    return {
        "ce_clean": ce(clean),
        "ce_spliced": ce(spliced),
        "ce_zero": ce(zeroed),
        "kl_spliced": jnp.sum(jnp.where(pred_BL, kl_sae_BL[:, :-1], 0.0)),
        "predictions": jnp.sum(pred_BL.astype(jnp.float32)),
        "kl_sae_kept": jnp.sum(jnp.where(mask_BL, kl_sae_BL, 0.0)),
        "kl_zero_kept": jnp.sum(jnp.where(mask_BL, kl_zero_BL, 0.0)),
    }


def accumulate(totals: dict | None, chunk: dict) -> dict:
    """Adds one chunk's sums (fetched to the host) into float64 totals."""
    chunk = {k: np.asarray(v, np.float64) for k, v in jax.device_get(chunk).items()}
    return chunk if totals is None else {k: totals[k] + chunk[k] for k in totals}


# ------------------------------------------------------------------ streamed Pearson correlation


def corr_chunk(
    a_NA: jax.Array, b_NB: jax.Array, shift_a_A: jax.Array, shift_b_B: jax.Array, mask_N: jax.Array
) -> dict[str, jax.Array]:
    """Sums, sums of squares and cross-products of shifted a and b over the masked rows.

    Shifting by a rough mean (e.g. a sample's) first keeps `cross/n − mean·mean` from cancelling
    catastrophically; the correlation itself does not depend on the shift.
    """
    keep_N1 = mask_N[:, None]
    a_NA = jnp.where(keep_N1, a_NA.astype(jnp.float32) - shift_a_A[None], 0.0)
    b_NB = jnp.where(keep_N1, b_NB.astype(jnp.float32) - shift_b_B[None], 0.0)
    return {
        "n": jnp.sum(mask_N.astype(jnp.float32)),
        "sum_a_A": jnp.sum(a_NA, axis=0),
        "sum_b_B": jnp.sum(b_NB, axis=0),
        "sq_a_A": jnp.sum(a_NA * a_NA, axis=0),
        "sq_b_B": jnp.sum(b_NB * b_NB, axis=0),
        "cross_AB": jnp.einsum("na,nb->ab", a_NA, b_NB, precision=_HIGHEST),
    }


def corr_finish(totals: dict) -> np.ndarray:
    """Pearson correlations [A, B] from accumulated `corr_chunk` sums; 0 for constant units."""
    n = totals["n"]
    mean_a_A, mean_b_B = totals["sum_a_A"] / n, totals["sum_b_B"] / n
    cov_AB = totals["cross_AB"] / n - mean_a_A[:, None] * mean_b_B[None]
    var_a_A = np.maximum(totals["sq_a_A"] / n - mean_a_A**2, 0.0)
    var_b_B = np.maximum(totals["sq_b_B"] / n - mean_b_B**2, 0.0)
    denom_AB = np.sqrt(var_a_A[:, None] * var_b_B[None])
    with np.errstate(divide="ignore", invalid="ignore"):
        corr_AB = np.where(denom_AB > 0, cov_AB / denom_AB, 0.0)
    return np.clip(corr_AB, -1.0, 1.0)


# ------------------------------------------------------------------ threshold detectors and F1


def quantile_thresholds(sample_NU: np.ndarray, rates: Sequence[float]) -> np.ndarray:
    """[U, T] thresholds at which each unit exceeds its threshold on ≈ `rate` of the sample."""
    levels_T = 1.0 - np.asarray(rates, np.float64)
    return np.quantile(np.asarray(sample_NU, np.float64), levels_T, axis=0).T.astype(np.float32)


def positive_quantile_thresholds(sample_NF: np.ndarray, rates: Sequence[float]) -> np.ndarray:
    """[F, T] thresholds exceeded by ≈ `rate` of each (non-negative) feature's non-zero values.

    Sparse features fire on far fewer tokens than the rates of `quantile_thresholds`, which
    would all collapse to 0 for them; their own firing distribution gives usable thresholds.
    """
    levels_T = 1.0 - np.asarray(rates, np.float64)
    positive_NF = np.where(sample_NF > 0, sample_NF, np.nan).astype(np.float32)
    with warnings.catch_warnings():  # features silent on the sample: all-NaN columns -> 0
        warnings.simplefilter("ignore", RuntimeWarning)
        q_TF = np.nanquantile(positive_NF, levels_T, axis=0)
    return np.nan_to_num(q_TF.T, nan=0.0).astype(np.float32)


def threshold_counts(
    a_NU: jax.Array, thresholds_UT: jax.Array, labels_NC: jax.Array, mask_N: jax.Array
) -> dict[str, jax.Array]:
    """True positives [U, T, C], predicted positives [U, T] and positives [C] of `a > t`."""
    keep_N = mask_N.astype(jnp.float32)
    labels_NC = labels_NC.astype(jnp.float32) * keep_N[:, None]
    # Rows: the C concepts, then the mask (whose product counts the predicted positives).
    rows_AN = jnp.concatenate([labels_NC, keep_N[:, None]], axis=1).T

    def one_threshold(t_U):  # one [N, U] comparison at a time: memory stays O(N·U)
        fire_NU = (a_NU > t_U[None]).astype(jnp.float32)
        return jnp.dot(rows_AN, fire_NU, precision=_HIGHEST)  # a matmul: fast on every backend

    counts_TAU = jax.lax.map(one_threshold, thresholds_UT.T)
    return {
        "tp_UTC": counts_TAU[:, :-1].transpose(2, 0, 1),
        "pos_UT": counts_TAU[:, -1].T,
        "label_C": labels_NC.sum(0),
    }


def f1_from_counts(tp_UTC: np.ndarray, pos_UT: np.ndarray, label_C: np.ndarray):
    """(f1, precision, recall), each [U, T, C]; 0 where undefined (nothing predicted or present)."""
    pos_UT1, label_11C = pos_UT[..., None], label_C[None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pos_UT1 > 0, tp_UTC / pos_UT1, 0.0)
        recall = np.where(label_11C > 0, tp_UTC / label_11C, 0.0)
        f1 = np.where(pos_UT1 + label_11C > 0, 2 * tp_UTC / (pos_UT1 + label_11C), 0.0)
    return f1, precision, recall


def best_detectors(f1_UTC: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per concept, the (unit, threshold index, F1), each [C], of the highest F1 (first on ties)."""
    num_u, num_t, num_c = f1_UTC.shape
    flat_XC = f1_UTC.reshape(num_u * num_t, num_c)
    best_C = np.argmax(flat_XC, axis=0)
    return best_C // num_t, best_C % num_t, flat_XC[best_C, np.arange(num_c)]


# ------------------------------------------------------------------ totals -> summary fields

DENSE_THRESHOLD = 0.1  # a feature active on more than 10% of tokens counts as dense
CORR_CUTOFF = 0.3  # Scaling Monosemanticity: most features correlate < 0.3 with every neuron


def sae_finish(totals: dict) -> dict:
    """Explained variance, MSE, L0, dead and dense fractions from the streamed SAE sums."""
    n = totals["n"]
    mean_D = totals["sum_x_D"] / n
    total_var = totals["sum_sq"] - n * float(mean_D @ mean_D)
    density_F = totals["fires_F"] / n
    return {
        "eval_tokens": int(n),
        "explained_variance": 1.0 - totals["sse"] / total_var if total_var > 0 else math.nan,
        "mse": totals["sse"] / n,
        "l0": totals["active"] / n,
        "dead_fraction": float(np.mean(density_F == 0)),
        "dense_fraction": float(np.mean(density_F > DENSE_THRESHOLD)),
        "live_features": int(np.sum(density_F > 0)),
    }


def ce_finish(totals: dict) -> dict:
    """Mean clean / spliced / zero-ablated CE, CE recovered and the spliced KL."""
    n = totals["predictions"]
    clean, spliced, zero = (float(totals[k] / n) for k in ("ce_clean", "ce_spliced", "ce_zero"))
    return {
        "ce_loss_clean": clean,
        "ce_loss_spliced": spliced,
        "ce_loss_zero": zero,
        "ce_loss_recovered": ce_loss_recovered(clean, spliced, zero),
        "kl_spliced": float(totals["kl_spliced"] / n),
        "ce_predictions": int(n),
    }


def neuron_finish(totals: dict, d_mlp: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Summary fields and per-feature arrays of each live feature's best |corr| with a unit."""
    corr_FU = np.abs(corr_finish(totals))
    live_F = totals["fires_F"] > 0
    per_feature, summary = {}, {}
    for kind, block_FU in (("neuron", corr_FU[:, :d_mlp]), ("resid", corr_FU[:, d_mlp:])):
        best_F = block_FU.max(axis=1)
        per_feature[f"{kind}_corr_F"] = best_F
        per_feature[f"best_{kind}_F"] = block_FU.argmax(axis=1)
        live = best_F[live_F]
        below = float(np.mean(live < CORR_CUTOFF)) if live.size else None
        summary[f"{kind}_corr_below_0_3"] = below
        summary[f"{kind}_corr_median"] = float(np.median(live)) if live.size else None
    return summary, per_feature


def unit_name(signed: int, d_mlp: int, width: int) -> tuple[str, str]:
    """("mlp:i" | "resid:j", "above" | "below") of a signed unit index (see threshold layout)."""
    base, direction = signed % width, ("above" if signed < width else "below")
    return (f"mlp:{base}" if base < d_mlp else f"resid:{base - d_mlp}"), direction


def concept_finish(
    totals: dict, thresholds_FT, thresholds_OT, concepts: Sequence[str], d_mlp: int,
    recovered_f1: float,
) -> dict:
    """Best single feature and best single neuron / hook dim per concept, and the table rows."""
    label_C = totals["label_C"]
    f1_FTC, prec_FTC, rec_FTC = f1_from_counts(
        totals["feat_tp_FTC"], totals["feat_pos_FT"], label_C
    )
    feat_C, feat_t_C, feat_f1_C = best_detectors(f1_FTC)
    unit_f1_OTC, _, _ = f1_from_counts(totals["unit_tp_OTC"], totals["unit_pos_OT"], label_C)
    unit_C, unit_t_C, unit_f1_C = best_detectors(unit_f1_OTC)
    width = thresholds_OT.shape[0] // 2
    concept_f1, concept_f1_neuron, table, absent = {}, {}, [], []
    for c, name in enumerate(concepts):
        if label_C[c] == 0:  # not present in the evaluated tokens: no F1 to speak of
            absent.append(name)
            continue
        f, t = int(feat_C[c]), int(feat_t_C[c])
        u, ut = int(unit_C[c]), int(unit_t_C[c])
        unit, direction = unit_name(u, d_mlp, width)
        threshold = float(thresholds_OT[u, ut]) * (1 if direction == "above" else -1)
        concept_f1[name] = {
            "f1": float(feat_f1_C[c]),
            "feature": f,
            "threshold": float(thresholds_FT[f, t]),
            "precision": float(prec_FTC[f, t, c]),
            "recall": float(rec_FTC[f, t, c]),
        }
        concept_f1_neuron[name] = {
            "f1": float(unit_f1_C[c]), "unit": unit, "direction": direction,
            "threshold": threshold,
        }
        table.append({
            "concept": name,
            "base_rate": float(label_C[c] / totals["n"]),
            **concept_f1[name],
            "neuron_unit": f"{unit} {'>' if direction == 'above' else '<'} {threshold:.3g}",
            "neuron_f1": float(unit_f1_C[c]),
        })
    present = [r["concept"] for r in table]

    def recovered(scores: dict) -> float | None:
        if not present:
            return None
        return float(np.mean([scores[c]["f1"] >= recovered_f1 for c in present]))

    return {
        "concept_f1": concept_f1,
        "concept_f1_neuron": concept_f1_neuron,
        "concepts_recovered_fraction": recovered(concept_f1),
        "concepts_recovered_fraction_neuron": recovered(concept_f1_neuron),
        "concepts_absent": absent,
        "concepts_feature_beats_unit": sum(r["f1"] > r["neuron_f1"] for r in table),
        "concept_table": table,
    }
