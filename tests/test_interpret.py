"""Feature interpretation against brute-force NumPy on small random data: top examples, the
quantile sample, histograms, concept F1, logit effects; and independence from batching."""

import numpy as np
import pytest

from monosem_jax.analysis import interpret as interp

W, L, F, C = 9, 16, 6, 4  # windows, window length, features, concepts
CFG = interp.InterpretConfig(
    top_n=5, context_before=3, context_after=2, quantile_bins=3, per_bin=2, sample_size=16
)


def _data(seed=0):
    """Sparse non-negative activations [W, L, F] (feature densities from 2 % to 60 %), labels."""
    rng = np.random.default_rng(seed)
    density_F = np.array([0.02, 0.05, 0.1, 0.3, 0.6, 0.0])  # the last feature is dead
    active = rng.random((W, L, F)) < density_F
    acts_WLF = np.where(active, rng.exponential(2.0, (W, L, F)), 0.0).astype(np.float32)
    labels_WL = rng.integers(0, 2**C, (W, L)).astype(np.uint32)
    return acts_WLF, labels_WL


def _run(acts_WLF, labels_WL, windows_per_batch, cfg=CFG):
    batches = (
        (w, acts_WLF[w : w + windows_per_batch], labels_WL[w : w + windows_per_batch])
        for w in range(0, W, windows_per_batch)
    )
    return interp.stream_features(batches, cfg, F, C, L)


def _entries(acts_WLF, feature):
    """(global index, activation) of every counted nonzero entry of one feature."""
    flat_N = acts_WLF[..., feature].reshape(-1)
    index_E = np.nonzero(flat_N)[0]
    index_E = index_E[index_E % L != 0]  # position 0 of each window is excluded
    return index_E, flat_N[index_E]


def _context(acts_WLF, feature, index):
    w, t = divmod(int(index), L)
    return [
        acts_WLF[w, s, feature] if 0 < s < L else 0.0
        for s in range(t - CFG.context_before, t + CFG.context_after + 1)
    ]


@pytest.mark.parametrize("windows_per_batch", [1, 4, W])
def test_top_examples_match_brute_force(windows_per_batch):
    acts_WLF, labels_WL = _data()
    stats = _run(acts_WLF, labels_WL, windows_per_batch)
    for f in range(F):
        index_E, act_E = _entries(acts_WLF, f)
        best = sorted(zip(-act_E, index_E, strict=True))[: CFG.top_n]  # ties: lower index
        want_index = [i for _, i in best] + [-1] * (CFG.top_n - len(best))
        np.testing.assert_array_equal(stats.top.index_FK[f], want_index)
        np.testing.assert_array_equal(stats.top.act_FK[f][: len(best)], [-a for a, _ in best])
        for k, (_, i) in enumerate(best):
            np.testing.assert_allclose(
                stats.top.ctx_FKC[f, k], _context(acts_WLF, f, i), rtol=1e-3, atol=1e-3
            )
        assert stats.count_F[f] == len(index_E)
        assert stats.density_F[f] == pytest.approx(len(index_E) / (W * (L - 1)))
        assert stats.max_act_F[f] == pytest.approx(act_E.max() if len(act_E) else 0.0)
        assert stats.mean_act_F[f] == pytest.approx(act_E.mean() if len(act_E) else 0.0)
        edges = stats.hist_edges_I1
        want_hist = np.histogram(np.clip(act_E, edges[0], edges[-1] * 0.999), edges)[0]
        np.testing.assert_array_equal(stats.hist_FI[f], want_hist)
    assert stats.tokens == W * (L - 1)


def test_quantile_examples_match_brute_force():
    acts_WLF, labels_WL = _data(seed=1)
    stats = _run(acts_WLF, labels_WL, 2)
    q_bins, per_bin = CFG.quantile_bins, CFG.per_bin
    for f in range(F):
        index_E, act_E = _entries(acts_WLF, f)
        # The sample: the sample_size entries with the smallest hash keys, then by activation.
        keys_E = interp.sample_keys(index_E, np.full_like(index_E, f), CFG.seed)
        chosen = np.argsort(keys_E)[: CFG.sample_size]
        sample = sorted(zip(-act_E[chosen], index_E[chosen], strict=True))
        m = len(sample)
        for q in range(q_bins):
            lo, hi = q * m // q_bins, (q + 1) * m // q_bins
            ranks = [lo + j * (hi - lo) // per_bin for j in range(min(per_bin, hi - lo))]
            want_index = [sample[r][1] for r in ranks] + [-1] * (per_bin - len(ranks))
            np.testing.assert_array_equal(stats.quantile_index_FQK[f, q], want_index)
            want_act = [-sample[r][0] for r in ranks] + [0.0] * (per_bin - len(ranks))
            np.testing.assert_allclose(stats.quantile_act_FQK[f, q], want_act, rtol=1e-6)
            for p, r in enumerate(ranks):
                np.testing.assert_allclose(
                    stats.quantile_ctx_FQKC[f, q, p],
                    _context(acts_WLF, f, sample[r][1]),
                    rtol=1e-3,
                    atol=1e-3,
                )
            if hi > lo:  # the bin's range spans its sampled activations
                assert stats.quantile_range_FQ2[f, q].tolist() == pytest.approx(
                    [-sample[hi - 1][0], -sample[lo][0]]
                )
        # Bins run from the highest activations down.
        shown = stats.quantile_act_FQK[f][stats.quantile_index_FQK[f] >= 0]
        assert (np.diff(shown) <= 0).all()


def test_results_do_not_depend_on_batching():
    acts_WLF, labels_WL = _data(seed=2)
    leaves = lambda stats: [y for x in stats for y in (x if isinstance(x, tuple) else (x,))]
    a, b = _run(acts_WLF, labels_WL, 1), _run(acts_WLF, labels_WL, W)
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_concept_f1_matches_brute_force():
    acts_WLF, labels_WL = _data(seed=3)
    stats = _run(acts_WLF, labels_WL, 3)
    counted_WL = np.arange(L)[None] != 0
    for f in range(F):
        active = (acts_WLF[..., f] > 0) & counted_WL
        for c in range(C):
            labelled = (((labels_WL >> c) & 1) == 1) & counted_WL
            tp = (active & labelled).sum()
            want = 2 * tp / (active.sum() + labelled.sum())
            assert stats.f1_FC[f, c] == pytest.approx(want)
    # A feature that is exactly a concept's indicator scores F1 = 1 on it and only on it.
    acts_WLF[..., 0] = ((labels_WL >> 2) & 1).astype(np.float32)
    f1_C = _run(acts_WLF, labels_WL, 3).f1_FC[0]
    assert f1_C[2] == pytest.approx(1.0) and (f1_C[[0, 1, 3]] < 0.9).all()


def test_unlabelled_corpus_has_no_f1():
    acts_WLF, _ = _data()
    batches = [(0, acts_WLF, None)]
    assert interp.stream_features(batches, CFG, F, None, L).f1_FC is None


def test_merge_breaks_ties_by_lower_index():
    buf = interp.empty_buffer(2, 3, 1)
    take = lambda f, s, i: interp.merge_into(
        buf,
        np.array(f),
        np.array(s, float),
        np.array(s, np.float32),
        np.array(i),
        np.zeros((len(f), 1), np.float16),
    )
    take([0, 0, 1], [1.0, 2.0, 5.0], [10, 11, 12])
    take([0, 0, 0], [2.0, 1.0, 3.0], [3, 4, 20])
    np.testing.assert_array_equal(buf.index_FK[0], [20, 3, 11])
    np.testing.assert_array_equal(buf.act_FK[0], [3.0, 2.0, 2.0])
    np.testing.assert_array_equal(buf.index_FK[1], [12, -1, -1])


def test_context_tokens_stay_inside_their_window():
    windows_WL = np.arange(2 * 8).reshape(2, 8)
    cfg = interp.InterpretConfig(context_before=3, context_after=2)
    got = interp.context_tokens(windows_WL, np.array([9, 7, -1]), cfg)
    np.testing.assert_array_equal(got[0], [-1, -1, 8, 9, 10, 11])  # token 1 of window 1
    np.testing.assert_array_equal(got[1], [4, 5, 6, 7, -1, -1])  # the last token of window 0
    assert (got[2] == -1).all()  # no example


@pytest.mark.parametrize("with_gain", [True, False])
def test_logit_effects_match_numpy(with_gain):
    rng = np.random.default_rng(0)
    w_dec_FD = rng.normal(size=(13, 8)) * rng.uniform(0.1, 3.0, size=(13, 1))
    w_u_DV = rng.normal(size=(8, 50))
    gain_D = rng.uniform(0.5, 1.5, size=8) if with_gain else None
    got = interp.logit_effects(w_dec_FD, w_u_DV, gain_D, top=10, chunk=5)
    u_FD = w_dec_FD / np.linalg.norm(w_dec_FD, axis=1, keepdims=True)
    u_FD = (u_FD - u_FD.mean(1, keepdims=True)) * (1.0 if gain_D is None else gain_D)
    e_FV = u_FD @ w_u_DV
    order_FV = np.argsort(-e_FV, axis=1)
    np.testing.assert_array_equal(got.up_id_FK, order_FV[:, :10])
    np.testing.assert_array_equal(got.down_id_FK, order_FV[:, ::-1][:, :10])
    np.testing.assert_allclose(
        got.up_val_FK, np.take_along_axis(e_FV, order_FV[:, :10], 1), rtol=1e-5, atol=1e-5
    )
    assert (np.diff(got.down_val_FK, axis=1) >= 0).all()
    # A unit direction along a token's unembedding column (centred, no gain) promotes it most.
    w_u_DV[:, 7] *= 5
    col_D = w_u_DV[:, 7] - w_u_DV[:, 7].mean()
    top = interp.logit_effects(col_D[None], w_u_DV, None, top=1)
    assert top.up_id_FK[0, 0] == 7
