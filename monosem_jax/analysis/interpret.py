"""What each SAE feature does: top and quantile examples, histograms, logit effects, concepts.

One streaming pass over held-out context windows. Each batch's activations [B, L, F] are reduced
to their nonzero (token, feature) entries, which update bounded per-feature state: counts, a
log-binned histogram, true positives against the concept labels, and two fixed-size buffers, the
`top_n` highest activations and a uniform sample of `sample_size` nonzero activations (bottom-k by
a hash of (token, feature), so it does not depend on batching). Entries carry the feature's
activations on their context, so no second pass is needed. Memory is O(F · (top_n + sample_size)
· context) plus one batch, whatever the number of tokens; a batch's entries that cannot enter a
buffer are dropped before their contexts are gathered.

Token t of window w has the global index w · L + t (as in `features.windows`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np

from monosem_jax.analysis import features as features_lib
from monosem_jax.gpt import model as gpt_model
from monosem_jax.sae.artifact import TrainedSAE


@dataclasses.dataclass(frozen=True)
class InterpretConfig:
    """How much of each feature to keep."""

    top_n: int = 20  # highest-activating examples per feature
    context_before: int = 24  # context tokens shown before an example (same window only)
    context_after: int = 8  # and after it
    quantile_bins: int = 4  # equal-count bins of the sampled nonzero activations
    per_bin: int = 3  # examples shown per quantile bin
    sample_size: int = 32  # uniform sample of nonzero activations per feature (the bins' source)
    exclude_first: bool = True  # skip position 0 of each window (the attention sink outlier)
    hist_lo: float = 1e-3  # log-spaced histogram range; values outside land in the end bins
    hist_hi: float = 1e3
    hist_bins_per_decade: int = 10
    logit_top: int = 10  # promoted / suppressed output tokens per feature
    seed: int = 0  # of the sample's hash

    @property
    def context(self) -> int:
        return self.context_before + 1 + self.context_after


class Buffer(NamedTuple):
    """Each feature's K best-scoring entries, best first (score -inf and index -1 when empty)."""

    score_FK: np.ndarray  # float64: activation (top) or -hash (sample)
    act_FK: np.ndarray  # float32 activation at the entry
    index_FK: np.ndarray  # int64 global token index
    ctx_FKC: np.ndarray  # float16 the feature's activations on the entry's context


class Stream(NamedTuple):
    """Running per-feature state of the pass (arrays updated in place: they are large)."""

    tokens: np.ndarray  # int64 [1]: token positions counted
    count_F: np.ndarray  # int64 nonzero activations
    sum_F: np.ndarray  # float64 sum of activations
    hist_FI: np.ndarray  # int64 counts per log bin
    tp_FC: np.ndarray | None  # int64 tokens where feature active and concept labelled
    label_count_C: np.ndarray | None  # int64 tokens labelled with each concept
    top: Buffer
    sample: Buffer


class FeatureStats(NamedTuple):
    """The result, one row per feature."""

    tokens: int
    density_F: np.ndarray  # fraction of counted tokens where the feature is active
    max_act_F: np.ndarray
    mean_act_F: np.ndarray  # mean of the nonzero activations (0 if never active)
    count_F: np.ndarray
    hist_edges_I1: np.ndarray  # bin edges; the first and last bins also hold values beyond them
    hist_FI: np.ndarray
    top: Buffer  # K = top_n
    quantile_index_FQK: np.ndarray  # global token index of bin q's p-th example (-1 = none)
    quantile_act_FQK: np.ndarray
    quantile_ctx_FQKC: np.ndarray
    quantile_range_FQ2: np.ndarray  # (lowest, highest) sampled activation of each bin
    f1_FC: np.ndarray | None  # F1 of "active > 0" at detecting each concept (None: no labels)


def empty_buffer(num_features: int, k: int, context: int) -> Buffer:
    return Buffer(
        np.full((num_features, k), -np.inf),
        np.zeros((num_features, k), np.float32),
        np.full((num_features, k), -1, np.int64),
        np.zeros((num_features, k, context), np.float16),
    )


def merge_into(
    buf: Buffer,
    f_E: np.ndarray,
    score_E: np.ndarray,
    act_E: np.ndarray,
    index_E: np.ndarray,
    ctx_EC: np.ndarray,
) -> Buffer:
    """Keeps each feature's K best of its buffered and new entries (ties: lower index first).

    A merge of two sorted lists per feature, without re-sorting the buffer: a new entry lands
    after the buffered entries that beat it plus the new ones ranked above it; buffered entries
    shift down by the new entries placed before them. Rows are written in place (they are large).
    """
    if f_E.size == 0:
        return buf
    k = buf.score_FK.shape[1]
    order_E = np.lexsort((index_E, -score_E, f_E))
    f_E, score_E, act_E, index_E = f_E[order_E], score_E[order_E], act_E[order_E], index_E[order_E]
    ctx_EC = ctx_EC[order_E]
    rows_A, start_A, count_A = np.unique(f_E, return_index=True, return_counts=True)
    num_a = rows_A.size
    row_E = np.repeat(np.arange(num_a), count_A)
    rank_E = np.arange(f_E.size) - start_A[row_E]
    old_score_EK, old_index_EK = buf.score_FK[f_E], buf.index_FK[f_E]
    beaten_EK = (old_score_EK > score_E[:, None]) | (
        (old_score_EK == score_E[:, None]) & (old_index_EK < index_E[:, None])
    )
    slots_before_E = beaten_EK.sum(1)  # buffered rows are sorted, so this is a prefix
    # Buffered entry j moves down by the number of new entries placed at or before it.
    placed_AK1 = np.bincount(row_E * (k + 1) + slots_before_E, minlength=num_a * (k + 1))
    shift_AK = np.cumsum(placed_AK1.reshape(num_a, k + 1), axis=1)[:, :k]
    dest_AK = np.arange(k)[None] + shift_AK
    a_X, j_X = np.nonzero((shift_AK > 0) & (dest_AK < k))
    src = (rows_A[a_X], j_X)
    dst = (rows_A[a_X], dest_AK[a_X, j_X])
    dest_E = slots_before_E + rank_E
    kept_E = dest_E < k
    for old_FK, new_E in (
        (buf.score_FK, score_E),
        (buf.act_FK, act_E),
        (buf.index_FK, index_E),
        (buf.ctx_FKC, ctx_EC),
    ):
        old_FK[dst] = old_FK[src]  # the right side is gathered before any write
        old_FK[f_E[kept_E], dest_E[kept_E]] = new_E[kept_E]
    return buf


def sample_keys(index_E: np.ndarray, f_E: np.ndarray, seed: int = 0) -> np.ndarray:
    """A uniform [0, 1) pseudo-random key per (token, feature): splitmix64 of both."""
    with np.errstate(over="ignore"):
        x = index_E.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x ^= f_E.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F) + np.uint64(seed)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def hist_edges(cfg: InterpretConfig) -> np.ndarray:
    decades = np.log10(cfg.hist_hi) - np.log10(cfg.hist_lo)
    num = int(round(decades * cfg.hist_bins_per_decade))
    return np.logspace(np.log10(cfg.hist_lo), np.log10(cfg.hist_hi), num + 1)


def new_stream(cfg: InterpretConfig, num_features: int, num_concepts: int | None) -> Stream:
    num_bins = hist_edges(cfg).size - 1
    labelled = num_concepts is not None
    return Stream(
        tokens=np.zeros(1, np.int64),
        count_F=np.zeros(num_features, np.int64),
        sum_F=np.zeros(num_features, np.float64),
        hist_FI=np.zeros((num_features, num_bins), np.int64),
        tp_FC=np.zeros((num_features, num_concepts), np.int64) if labelled else None,
        label_count_C=np.zeros(num_concepts, np.int64) if labelled else None,
        top=empty_buffer(num_features, cfg.top_n, cfg.context),
        sample=empty_buffer(num_features, cfg.sample_size, cfg.context),
    )


def _contexts(
    f_NF: np.ndarray, n_E: np.ndarray, f_E: np.ndarray, length: int, cfg: InterpretConfig
) -> np.ndarray:
    """[E, C] activations of feature f_E on the window positions around token n_E (0 outside)."""
    t_E = n_E % length
    offset_C = np.arange(-cfg.context_before, cfg.context_after + 1)
    t_EC = t_E[:, None] + offset_C[None]
    inside_EC = (t_EC >= 0) & (t_EC < length)
    if cfg.exclude_first:
        inside_EC &= t_EC != 0
    n_EC = np.clip(n_E[:, None] + offset_C[None], 0, f_NF.shape[0] - 1)
    return np.where(inside_EC, f_NF[n_EC, f_E[:, None]], 0.0).astype(np.float16)


def _offer(buf, score_E, f_E, n_E, act_E, f_NF, first_index, length, cfg) -> None:
    """Merges the entries that can enter the buffer (at least its current K-th score)."""
    can_E = score_E >= buf.score_FK[f_E, -1]
    f_K, n_K = f_E[can_E], n_E[can_E]
    ctx_KC = _contexts(f_NF, n_K, f_K, length, cfg)
    merge_into(buf, f_K, score_E[can_E], act_E[can_E], n_K + first_index, ctx_KC)


def update(
    stream: Stream,
    cfg: InterpretConfig,
    f_BLF: np.ndarray,
    first_index: int,
    labels_BL: np.ndarray | None = None,
) -> Stream:
    """Adds one batch of windows (whose first token has global index `first_index`)."""
    num_b, length, num_f = f_BLF.shape
    f_NF = np.asarray(f_BLF, np.float32).reshape(num_b * length, num_f)
    counted_N = np.ones(num_b * length, bool)
    if cfg.exclude_first:
        counted_N[::length] = False
    # A flat boolean scan is ~9x faster than np.nonzero on the 2-D float array.
    n_E, f_E = np.divmod(np.flatnonzero(f_NF.ravel() > 0), num_f)
    counted_E = counted_N[n_E]
    n_E, f_E = n_E[counted_E], f_E[counted_E]
    act_E = f_NF[n_E, f_E]
    stream.tokens[0] += counted_N.sum()
    stream.count_F[:] += np.bincount(f_E, minlength=num_f)
    stream.sum_F[:] += np.bincount(f_E, weights=act_E, minlength=num_f)
    num_bins = stream.hist_FI.shape[1]
    bin_E = np.floor((np.log10(act_E) - np.log10(cfg.hist_lo)) * cfg.hist_bins_per_decade)
    bin_E = np.clip(bin_E, 0, num_bins - 1).astype(np.int64)
    stream.hist_FI[:] += np.bincount(f_E * num_bins + bin_E, minlength=num_f * num_bins).reshape(
        num_f, num_bins
    )
    if stream.tp_FC is not None and labels_BL is not None:
        num_c = stream.tp_FC.shape[1]
        bits_NC = (labels_BL.reshape(-1)[:, None] >> np.arange(num_c, dtype=np.uint32)) & 1
        stream.label_count_C[:] += bits_NC[counted_N].sum(0).astype(np.int64)
        hit_EC = bits_NC[n_E].astype(bool)
        cell = (f_E[:, None] * num_c + np.arange(num_c)[None])[hit_EC]
        stream.tp_FC[:] += np.bincount(cell, minlength=num_f * num_c).reshape(num_f, num_c)
    args = (f_E, n_E, act_E, f_NF, first_index, length, cfg)
    _offer(stream.top, act_E.astype(np.float64), *args)
    _offer(stream.sample, -sample_keys(n_E + first_index, f_E, cfg.seed), *args)
    return stream


def quantile_picks(act_FK: np.ndarray, cfg: InterpretConfig) -> tuple[np.ndarray, np.ndarray]:
    """Ranks [F, Q, K] into each row's activations sorted high to low (-1 = none), and bin ranges.

    The m valid (> 0) values of a row, sorted descending, split into Q equal-count bins (bin 0
    the highest: ranks [q·m/Q, (q+1)·m/Q)); each bin shows up to K evenly spaced examples.
    """
    q, p = cfg.quantile_bins, cfg.per_bin
    m_F1 = (act_FK > 0).sum(1, keepdims=True)
    lo_FQ = (np.arange(q)[None] * m_F1) // q
    hi_FQ = (np.arange(1, q + 1)[None] * m_F1) // q
    width_FQ1 = (hi_FQ - lo_FQ)[..., None]
    j_K = np.arange(p)[None, None]
    rank_FQK = lo_FQ[..., None] + (j_K * width_FQ1) // p
    rank_FQK = np.where(j_K < width_FQ1, rank_FQK, -1)
    sorted_FK = -np.sort(-act_FK, axis=1)
    take = lambda r: np.take_along_axis(sorted_FK, np.maximum(r, 0), axis=1)
    high_FQ = np.where(hi_FQ > lo_FQ, take(lo_FQ), 0.0)
    low_FQ = np.where(hi_FQ > lo_FQ, take(np.maximum(hi_FQ - 1, 0)), 0.0)
    return rank_FQK, np.stack([low_FQ, high_FQ], axis=-1)


def concept_f1(tp_FC: np.ndarray, count_F: np.ndarray, label_count_C: np.ndarray) -> np.ndarray:
    """F1 = 2·TP / (#active + #labelled) of each feature at each concept (0 when both are 0)."""
    denom_FC = count_F[:, None] + label_count_C[None]
    return np.where(denom_FC > 0, 2.0 * tp_FC / np.maximum(denom_FC, 1), 0.0)


def finish(stream: Stream, cfg: InterpretConfig) -> FeatureStats:
    """Turns the running state into per-feature statistics and example picks."""
    tokens = int(stream.tokens[0])
    count_F = stream.count_F
    # Rows of the sample are ordered by hash key; the bins need them by activation.
    rows_F1 = np.arange(count_F.shape[0])[:, None]
    by_act_FK = np.argsort(-stream.sample.act_FK, axis=1, kind="stable")
    sample_act_FK = stream.sample.act_FK[rows_F1, by_act_FK]
    rank_FQK, range_FQ2 = quantile_picks(sample_act_FK, cfg)
    num_f, num_q, num_p = rank_FQK.shape
    slot_FX = by_act_FK[rows_F1, np.maximum(rank_FQK, 0).reshape(num_f, num_q * num_p)]
    none_FQK = rank_FQK < 0
    q_index = np.where(
        none_FQK, -1, stream.sample.index_FK[rows_F1, slot_FX].reshape(none_FQK.shape)
    )
    q_act = np.where(none_FQK, 0.0, stream.sample.act_FK[rows_F1, slot_FX].reshape(none_FQK.shape))
    q_ctx = stream.sample.ctx_FKC[rows_F1, slot_FX].reshape(num_f, num_q, num_p, -1)
    f1_FC = None
    if stream.tp_FC is not None:
        f1_FC = concept_f1(stream.tp_FC, count_F, stream.label_count_C)
    return FeatureStats(
        tokens=tokens,
        density_F=count_F / max(tokens, 1),
        max_act_F=np.maximum(stream.top.act_FK[:, 0], 0.0),
        mean_act_F=np.where(count_F > 0, stream.sum_F / np.maximum(count_F, 1), 0.0),
        count_F=count_F,
        hist_edges_I1=hist_edges(cfg),
        hist_FI=stream.hist_FI,
        top=stream.top,
        quantile_index_FQK=q_index,
        quantile_act_FQK=q_act.astype(np.float32),
        quantile_ctx_FQKC=q_ctx,
        quantile_range_FQ2=range_FQ2,
        f1_FC=f1_FC,
    )


def stream_features(
    batches: Iterable[tuple[int, np.ndarray, np.ndarray | None]],
    cfg: InterpretConfig,
    num_features: int,
    num_concepts: int | None,
    window_length: int,
) -> FeatureStats:
    """Runs the pass over (first window index, activations [B, L, F], labels [B, L]) batches."""
    stream = new_stream(cfg, num_features, num_concepts)
    for first_window, f_BLF, labels_BL in batches:
        update(stream, cfg, f_BLF[..., :num_features], first_window * window_length, labels_BL)
    return finish(stream, cfg)


def interpret(
    model_cfg: gpt_model.GPTConfig,
    lm_params: dict,
    sae: TrainedSAE,
    windows_WL: np.ndarray,
    labels_WL: np.ndarray | None,
    num_concepts: int | None,
    cfg: InterpretConfig,
    batch_size: int = 16,
    max_features: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> FeatureStats:
    """Feature statistics of a trained SAE on the given windows (LM + SAE forward, one pass)."""
    num_features = sae.sae_cfg.d_sae if not max_features else min(max_features, sae.sae_cfg.d_sae)

    def batches():
        for first, tokens_BL, _, f_BLF in features_lib.iterate_features(
            model_cfg, lm_params, sae, windows_WL, batch_size
        ):
            labels = None if labels_WL is None else labels_WL[first : first + tokens_BL.shape[0]]
            yield first, f_BLF, labels
            if on_batch is not None:
                on_batch(first + tokens_BL.shape[0])

    return stream_features(batches(), cfg, num_features, num_concepts, windows_WL.shape[1])


def context_tokens(windows_WL: np.ndarray, index_K: np.ndarray, cfg: InterpretConfig) -> np.ndarray:
    """[..., C] token ids around each global token index (-1 outside its window or for index -1)."""
    length = windows_WL.shape[1]
    w_K, t_K = index_K // length, index_K % length
    t_KC = t_K[..., None] + np.arange(-cfg.context_before, cfg.context_after + 1)
    valid_KC = (t_KC >= 0) & (t_KC < length) & (index_K[..., None] >= 0)
    tokens_KC = windows_WL[np.maximum(w_K, 0)[..., None], np.clip(t_KC, 0, length - 1)]
    return np.where(valid_KC, tokens_KC, -1)


class LogitEffects(NamedTuple):
    """Output tokens most promoted / suppressed by each feature's decoder direction."""

    up_id_FK: np.ndarray
    up_val_FK: np.ndarray
    down_id_FK: np.ndarray  # most negative first
    down_val_FK: np.ndarray


def unembedding(model_cfg, lm_params) -> np.ndarray:
    """W_U [D, V] of the GPT (the tied embedding's transpose, or the unembed kernel)."""
    if model_cfg.tied_embeddings:
        return np.asarray(lm_params["embed"]["embedding"], np.float32).T
    return np.asarray(lm_params["unembed"]["kernel"], np.float32)


def logit_directions(w_dec_FD: np.ndarray, ln_scale_D: np.ndarray | None) -> np.ndarray:
    """(u_i − mean u_i) ⊙ γ for unit-norm decoder rows u_i: each feature's direction as the
    direct path through the final LayerNorm sees it (times W_U: its logit effect).

    The LayerNorm's centring and gain γ are applied; its 1/σ is a positive per-token constant
    that scales all logits alike, so it is left out.
    """
    w_FD = np.asarray(w_dec_FD, np.float32)
    norm_F1 = np.linalg.norm(w_FD, axis=1, keepdims=True)
    u_FD = w_FD / np.where(norm_F1 > 0, norm_F1, 1.0)
    u_FD = u_FD - u_FD.mean(axis=1, keepdims=True)
    if ln_scale_D is not None:
        u_FD = u_FD * np.asarray(ln_scale_D, np.float32)[None]
    return u_FD


def logit_effects(
    w_dec_FD: np.ndarray,
    w_u_DV: np.ndarray,
    ln_scale_D: np.ndarray | None,
    top: int = 10,
    chunk: int = 1024,
) -> LogitEffects:
    """Top promoted / suppressed tokens of logit_directions(W_dec, γ) @ W_U."""
    u_FD = logit_directions(w_dec_FD, ln_scale_D)
    top = min(top, w_u_DV.shape[1])
    out = [np.zeros((u_FD.shape[0], top), dt) for dt in (np.int64, np.float32) * 2]
    for start in range(0, u_FD.shape[0], chunk):
        e_GV = u_FD[start : start + chunk] @ w_u_DV
        for (ids, vals), sign in ((out[0:2], 1.0), (out[2:4], -1.0)):
            part_GK = np.argpartition(-sign * e_GV, top - 1, axis=1)[:, :top]
            val_GK = np.take_along_axis(e_GV, part_GK, 1)
            order_GK = np.argsort(-sign * val_GK, axis=1, kind="stable")
            ids[start : start + chunk] = np.take_along_axis(part_GK, order_GK, 1)
            vals[start : start + chunk] = np.take_along_axis(val_GK, order_GK, 1)
    return LogitEffects(*out)
