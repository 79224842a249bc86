"""Probes: logistic fits against float64 Newton, F1 thresholds by brute force, k-sparse picks."""

import numpy as np
import pytest

from monosem_jax.analysis import probes


def _newton(x_ND, y_N, l2, iters=60):
    """float64 Newton's method on mean BCE + l2/2 ‖w‖² (bias unpenalized): (w [D], b)."""
    n, d = x_ND.shape
    xb_ND1 = np.concatenate([x_ND, np.ones((n, 1))], axis=1)
    theta, reg = np.zeros(d + 1), np.r_[np.full(d, l2), 0.0]
    for _ in range(iters):
        p_N = 1 / (1 + np.exp(-xb_ND1 @ theta))
        grad = xb_ND1.T @ (p_N - y_N) / n + reg * theta
        hess = (xb_ND1 * (p_N * (1 - p_N))[:, None]).T @ xb_ND1 / n + np.diag(reg)
        theta -= np.linalg.solve(hess, grad)
    return theta[:-1], theta[-1]


def _noisy_problem(rng, n, d, c):
    x_ND = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, d)
    z_NC = x_ND @ (rng.normal(size=(d, c)) * 1.5) + np.linspace(-3, 0, c) + rng.normal(size=(n, c))
    return x_ND, z_NC > 0


def test_fit_logistic_matches_float64_newton_dense_and_sparse_in_one_program():
    rng = np.random.default_rng(0)
    x_ND, y_NC = _noisy_problem(rng, 3000, 6, 3)
    x_NCK = rng.normal(size=(3000, 2, 3))
    y2_NC = (x_NCK[..., 0] - 0.5 * x_NCK[..., 2] + rng.normal(size=(3000, 2)) > 1.0)
    l2 = 1e-2
    dense, sparse = probes.fit_logistic((x_ND, x_NCK), (y_NC, y2_NC), l2, 60, tol=0.0)
    for c in range(3):
        w_D, b = _newton(x_ND, y_NC[:, c].astype(float), l2)
        np.testing.assert_allclose(np.asarray(dense["w"])[:, c], w_D, atol=2e-4)
        assert float(dense["b_C"][c]) == pytest.approx(b, abs=2e-4)
    for c in range(2):  # concept c's own K inputs
        w_K, b = _newton(x_NCK[:, c], y2_NC[:, c].astype(float), l2)
        np.testing.assert_allclose(np.asarray(sparse["w"])[c], w_K, atol=2e-4)
        assert float(sparse["b_C"][c]) == pytest.approx(b, abs=2e-4)
    # Stopped at the default gradient tolerance: the same probes to a looser precision.
    stopped, _ = probes.fit_logistic((x_ND, x_NCK), (y_NC, y2_NC), l2, 60)
    np.testing.assert_allclose(np.asarray(stopped["w"]), np.asarray(dense["w"]), atol=2e-3)
    # The logits are x·w + b in both layouts.
    z_NC = np.asarray(probes.probe_logits(sparse["w"], sparse["b_C"], x_NCK))
    want_NC = np.einsum("nck,ck->nc", x_NCK, np.asarray(sparse["w"])) + np.asarray(sparse["b_C"])
    np.testing.assert_allclose(z_NC, want_NC, rtol=1e-5, atol=1e-5)


def test_f1_at_threshold_by_hand():
    scores_NC = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.3], [0.1, 0.4]])
    y_NC = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], bool)
    # Concept 0 at t = 0.5: predicted {0, 1}, tp 1, 2 positives: F1 = 2·1 / (2 + 2) = 0.5.
    # Concept 1: no positives and nothing predicted at t = 1: F1 0 (undefined).
    f1_C = probes.f1_at_threshold(scores_NC, y_NC, np.array([0.5, 1.0]))
    np.testing.assert_allclose(f1_C, [0.5, 0.0])
    assert probes.f1_at_threshold(scores_NC, y_NC, np.array([0.2, 0.0]))[0] == pytest.approx(0.8)


def test_best_threshold_is_the_brute_force_best_with_ties():
    rng = np.random.default_rng(1)
    scores_NC = rng.integers(0, 12, size=(300, 4)).astype(float)  # many ties
    y_NC = rng.random((300, 4)) < [0.1, 0.3, 0.02, 0.0]
    scores_NC[:, 1] += 4 * y_NC[:, 1]
    threshold_C = probes.best_threshold(scores_NC, y_NC)
    got_C = probes.f1_at_threshold(scores_NC, y_NC, threshold_C)
    for c in range(4):
        values = np.unique(scores_NC[:, c])
        candidates = np.r_[values[0] - 1, (values[:-1] + values[1:]) / 2, values[-1]]
        best = max(probes.f1_at_threshold(scores_NC[:, [c]], y_NC[:, [c]], np.array([t]))[0]
                   for t in candidates)
        assert got_C[c] == pytest.approx(best, abs=1e-12), c
    assert threshold_C[3] == np.inf and got_C[3] == 0.0  # no positives: predict nothing


def test_class_mean_diff_and_top_k_pick_the_planted_latents():
    rng = np.random.default_rng(2)
    n, f = 4000, 50
    y_NC = rng.random((n, 2)) < [0.1, 0.05]
    acts_NF = np.maximum(rng.normal(size=(n, f)), 0) * 0.5
    acts_NF[:, 7] += 3.0 * y_NC[:, 0]  # concept 0: latents 7, then 30
    acts_NF[:, 30] += 1.0 * y_NC[:, 0]
    acts_NF[:, 12] = np.where(y_NC[:, 1], 0.0, 2.0)  # concept 1: latent 12 goes *silent*
    diff_CF = probes.class_mean_diff(acts_NF, y_NC)
    for c in range(2):
        want = acts_NF[y_NC[:, c]].mean(0) - acts_NF[~y_NC[:, c]].mean(0)
        np.testing.assert_allclose(diff_CF[c], want, rtol=1e-5, atol=1e-6)
    idx_CK = probes.top_k_latents(diff_CF, 2)
    assert list(idx_CK[0]) == [7, 30] and idx_CK[1, 0] == 12  # |diff|: a negative one counts
    # In chunks through an activation function, as eval runs it: same selection and columns.
    x_ND = rng.normal(size=(n, 5))
    w_DF = rng.normal(size=(5, f))

    def acts_fn(x):
        return np.maximum(x @ w_DF, 0)

    half = n // 2
    idx, train_NCK, test_NCK = probes.select_and_gather(acts_fn, x_ND[:half], y_NC[:half],
                                                        x_ND[half:], 3, chunk=333)
    full_NF = acts_fn(x_ND)
    np.testing.assert_array_equal(
        idx, probes.top_k_latents(probes.class_mean_diff(full_NF[:half], y_NC[:half]), 3))
    np.testing.assert_allclose(train_NCK, full_NF[:half][:, idx], rtol=1e-6)
    np.testing.assert_allclose(test_NCK, full_NF[half:][:, idx], rtol=1e-6)


def test_stacked_ks_are_the_separate_k_sparse_probes():
    rng = np.random.default_rng(3)
    x_NCK = rng.normal(size=(2000, 2, 3))
    y_NC = x_NCK[..., 0] + 0.7 * x_NCK[..., 1] + 0.5 * rng.normal(size=(2000, 2)) > 0.5
    stacked_NSK = probes.stack_ks(x_NCK, (1, 2))
    assert stacked_NSK.shape == (2000, 4, 3)
    (both,) = probes.fit_logistic((stacked_NSK,), (np.tile(y_NC, (1, 2)),), 1e-2, 60, tol=0.0)
    w_SCK = np.asarray(both["w"]).reshape(2, 2, 3)
    assert np.all(w_SCK[0, :, 1:] == 0) and np.all(w_SCK[1, :, 2:] == 0)  # zeroed inputs
    for s, k in enumerate((1, 2)):
        (alone,) = probes.fit_logistic((x_NCK[..., :k],), (y_NC,), 1e-2, 60, tol=0.0)
        np.testing.assert_allclose(w_SCK[s, :, :k], np.asarray(alone["w"]), atol=2e-4)


def test_held_out_f1_separable_and_noise():
    rng = np.random.default_rng(4)
    x_ND = rng.normal(size=(4000, 8))
    y_NC = np.stack([x_ND[:, 0] - x_ND[:, 3] > 1.0,  # separable by a direction: F1 1
                     rng.random(4000) < 0.2], axis=1)  # noise: F1 near the base-rate floor
    (f1_C,) = probes.held_out_f1([(x_ND[:2000], y_NC[:2000], x_ND[2000:], y_NC[2000:])],
                                 1e-4, 100)
    assert f1_C[0] > 0.98 and f1_C[1] < 0.4


def test_split_windows_is_seeded_disjoint_and_covers_the_sample():
    cfg = probes.ProbeConfig(tokens=31 * 10, train_fraction=0.5, seed=3)
    train_W, test_W = probes.split_windows(64, 31, cfg)
    assert len(train_W) == len(test_W) == 5 and not set(train_W) & set(test_W)
    assert list(train_W) == sorted(train_W) and list(test_W) == sorted(test_W)
    again = probes.split_windows(64, 31, cfg)
    np.testing.assert_array_equal(again[0], train_W)
    train_W, test_W = probes.split_windows(64, 31, probes.ProbeConfig(tokens=0))
    assert sorted([*train_W, *test_W]) == list(range(64))
    with pytest.raises(ValueError, match="probe_ks"):
        probes.ProbeConfig(ks=(0, 2))
    with pytest.raises(ValueError, match="train_fraction"):
        probes.ProbeConfig(train_fraction=1.0)


def test_probe_fields_and_summary_counts():
    table = [{"concept": "a"}, {"concept": "c"}]
    results = {"probe_f1": np.array([0.8, 0.5, 0.0]),
               "sparse_probe_f1_k1": np.array([0.76, 0.1, 0.0]),
               "sparse_latents": np.array([[3], [4], [5]])}
    y_train_NC = np.array([[1, 0, 1], [0, 0, 0]], bool)
    y_test_NC = np.array([[1, 0, 0], [1, 0, 1]], bool)
    probes.probe_fields(table, ["a", "b", "c"], results, y_train_NC, y_test_NC, (1,))
    assert table[0]["probe_f1"] == 0.8
    assert table[0]["sparse_probe_over_ceiling_k1"] == pytest.approx(0.95)
    assert table[0]["sparse_probe_latents"] == [3] and table[0]["probe_test_positives"] == 2
    assert table[1]["probe_f1"] == 0.0 and table[1]["sparse_probe_over_ceiling_k1"] is None
    summary = probes.probe_summary(table, 10, 8, probes.ProbeConfig(ks=(1,)), 1.5)
    assert summary["concepts_sparse_probe_k1_over_ceiling_ge_0_9"] == 1
    assert summary["concepts_probed"] == 2 and summary["probe_train_tokens"] == 10
