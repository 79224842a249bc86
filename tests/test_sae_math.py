"""SAE math against float64 NumPy references: losses, gradients, selections, schedules, steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from monosem_jax.sae import losses, model, step
from monosem_jax.sae import metrics as sae_metrics

B, D, F = 16, 8, 32


# ----------------------------------------------------------------------------- helpers


def _cfg(variant, **kw):
    base = dict(variant=variant, d=D, d_sae=F, k=5, k_aux=6, dead_steps=3)
    base.update(kw)
    return model.SAEConfig(**base)


def _random_params(cfg, seed=0):
    """Init params perturbed so biases are nonzero and decoder norms differ per row."""
    rng = np.random.default_rng(seed)
    params = model.init_params(cfg, jax.random.key(seed))
    out = {k: np.asarray(v) + 0.05 * rng.normal(size=v.shape) for k, v in params.items()}
    out["w_enc_DF"] = out["w_enc_DF"] * 4.0
    out["w_dec_FD"] = out["w_dec_FD"] * rng.uniform(0.5, 2.0, size=(F, 1))
    return {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}


def _x(seed=1, n=B):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, D)) * 2.0, jnp.float32)


def _f64(tree):
    return {k: np.asarray(v, np.float64) for k, v in tree.items()}


def _fd_grad(fn, p, eps=1e-6, skip=()):
    """Central finite differences of a float64 NumPy scalar function of a param dict."""
    grads = {}
    for name, v in p.items():
        if name in skip:
            continue
        g = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            hi, lo = v.copy(), v.copy()
            hi[idx] += eps
            lo[idx] -= eps
            g[idx] = (fn({**p, name: hi}) - fn({**p, name: lo})) / (2 * eps)
        grads[name] = g
    return grads


def _assert_grads_close(g, g_ref):
    for name, ref in g_ref.items():
        scale = max(np.abs(ref).max(), 1e-3)
        np.testing.assert_allclose(np.asarray(g[name]), ref, rtol=2e-3, atol=2e-4 * scale,
                                   err_msg=name)


def _value_and_grad(loss_fn, params, x, hp, dead, cfg):
    fn = lambda p: loss_fn(p, x, hp, dead, cfg)
    (loss, aux), g = jax.value_and_grad(fn, has_aux=True)(params)
    return loss, aux, g


# ----------------------------------------------------------------------------- NumPy references


def _np_topk(z, k):
    idx = np.argsort(-z, axis=1, kind="stable")[:, :k]
    rows = np.arange(z.shape[0])[:, None]
    f = np.zeros_like(z)
    f[rows, idx] = np.maximum(z[rows, idx], 0.0)
    return f


def _np_mse(x, xhat):
    return np.mean(np.sum((x - xhat) ** 2, axis=1))


def ref_anthropic(p, x, l1_coef):
    f = np.maximum(x @ p["w_enc_DF"] + p["b_enc_F"], 0.0)
    xhat = f @ p["w_dec_FD"] + p["b_dec_D"]
    norms = np.linalg.norm(p["w_dec_FD"], axis=1)
    return _np_mse(x, xhat) + l1_coef * np.mean(np.sum(f * norms, axis=1))


def ref_matryoshka(p, x, l1_coef, prefixes):
    """Each prefix decoded on its own (no cumulative sums): the definition, not the algorithm."""
    f = np.maximum(x @ p["w_enc_DF"] + p["b_enc_F"], 0.0)
    mses = [_np_mse(x, f[:, :m] @ p["w_dec_FD"][:m] + p["b_dec_D"]) for m in prefixes]
    norms = np.linalg.norm(p["w_dec_FD"], axis=1)
    return np.mean(mses) + l1_coef * np.mean(np.sum(f * norms, axis=1)), mses


def ref_towards(p, x, l1_coef):
    f = np.maximum((x - p["b_dec_D"]) @ p["w_enc_DF"] + p["b_enc_F"], 0.0)
    xhat = f @ p["w_dec_FD"] + p["b_dec_D"]
    return _np_mse(x, xhat) + l1_coef * np.mean(np.sum(np.abs(f), axis=1))


def ref_topk(p, x, k, k_aux, dead, aux_coef, e_fixed=None):
    """Loss with AuxK; e_fixed is the stop-gradient residual (held fixed for finite differences)."""
    z = (x - p["b_dec_D"]) @ p["w_enc_DF"] + p["b_enc_F"]
    xhat = _np_topk(z, k) @ p["w_dec_FD"] + p["b_dec_D"]
    e = x - xhat if e_fixed is None else e_fixed
    auxk = 0.0
    if dead.any():
        ehat = _np_topk(np.where(dead[None], z, -np.inf), k_aux) @ p["w_dec_FD"]
        auxk = np.sum((ehat - e) ** 2) / np.sum((e - e.mean(0)) ** 2)
    return _np_mse(x, xhat) + aux_coef * auxk, auxk, x - xhat


def _np_batchtopk(z, k):
    """ReLU of the k·B largest entries of the whole batch (z flattened), zero elsewhere."""
    flat = z.reshape(-1)
    idx = np.argsort(-flat, kind="stable")[: k * z.shape[0]]
    f = np.zeros_like(flat)
    f[idx] = np.maximum(flat[idx], 0.0)
    return f.reshape(z.shape)


def ref_batchtopk(p, x, k, k_aux, dead, aux_coef, prefixes=(F,), e_fixed=None):
    """(loss, auxk, residual, f, prefix mses): each prefix decoded on its own, AuxK as ref_topk."""
    z = (x - p["b_dec_D"]) @ p["w_enc_DF"] + p["b_enc_F"]
    f = _np_batchtopk(z, k)
    mses = [_np_mse(x, f[:, :m] @ p["w_dec_FD"][:m] + p["b_dec_D"]) for m in prefixes]
    xhat = f @ p["w_dec_FD"] + p["b_dec_D"]
    e = x - xhat if e_fixed is None else e_fixed
    auxk = 0.0
    if dead.any():
        ehat = _np_topk(np.where(dead[None], z, -np.inf), k_aux) @ p["w_dec_FD"]
        auxk = np.sum((ehat - e) ** 2) / np.sum((e - e.mean(0)) ** 2)
    return np.mean(mses) + aux_coef * auxk, auxk, x - xhat, f, mses


def ref_threshold_steps(theta, min_kept_per_step, rate):
    """θ after each step: the first positive sample sets it, then an EMA; 0 (none) leaves it."""
    out = []
    for m in min_kept_per_step:
        if m > 0:
            theta = m if theta == 0 else (1 - rate) * theta + rate * m
        out.append(theta)
    return out


def ref_jl_penalty(w):
    u = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = np.abs(u @ u.T)
    i, j = np.triu_indices(w.shape[0], 1)
    return np.mean(np.arctanh(np.clip(cos[i, j], 0, 1 - losses.JL_COS_EPS)))


def ref_jumprelu(p, x, l0_coef):
    z = x @ p["w_enc_DF"] + p["b_enc_F"]
    theta = np.exp(p["log_threshold_F"])
    f = np.where(z > theta, z, 0.0)
    xhat = f @ p["w_dec_FD"] + p["b_dec_D"]
    return _np_mse(x, xhat) + l0_coef * np.mean(np.sum(z > theta, axis=1))


def ref_jumprelu_log_threshold_grad(p, x, l0_coef, eps):
    """The documented pseudo-gradient wrt log θ (rectangle kernel of width eps)."""
    z = x @ p["w_enc_DF"] + p["b_enc_F"]
    theta = np.exp(p["log_threshold_F"])
    f = np.where(z > theta, z, 0.0)
    xhat = f @ p["w_dec_FD"] + p["b_dec_D"]
    g_f = -2.0 / x.shape[0] * (x - xhat) @ p["w_dec_FD"].T
    kernel = (np.abs((z - theta) / eps) < 0.5).astype(np.float64)
    d_theta = np.sum(g_f * (-theta / eps) * kernel, 0) + l0_coef / x.shape[0] * np.sum(
        -kernel / eps, 0)
    return theta * d_theta, kernel.sum()


# ----------------------------------------------------------------------------- losses and grads


def test_anthropic_loss_and_grads():
    cfg = _cfg("anthropic_2024")
    params, x = _random_params(cfg), _x()
    hp = step.default_hparams(cfg, l1_coef=0.7)
    loss, aux, g = _value_and_grad(losses.loss_anthropic_2024, params, x, hp, None, cfg)
    ref = lambda p: ref_anthropic(p, np.asarray(x, np.float64), 0.7)
    np.testing.assert_allclose(float(loss), ref(_f64(params)), rtol=1e-5)
    assert set(aux) >= {"f_BF", "xhat_BD", "mse", "l1"}
    _assert_grads_close(g, _fd_grad(ref, _f64(params)))


def test_matryoshka_loss_and_grads():
    cfg = _cfg("matryoshka", prefixes=(3, 10, 20))  # uneven chunks; F = 32 appended
    assert cfg.prefixes == (3, 10, 20, F)
    params, x = _random_params(cfg), _x()
    hp = step.default_hparams(cfg, l1_coef=0.7)
    loss, aux, g = _value_and_grad(losses.loss_matryoshka, params, x, hp, None, cfg)
    x64 = np.asarray(x, np.float64)
    ref = lambda p: ref_matryoshka(p, x64, 0.7, cfg.prefixes)[0]
    np.testing.assert_allclose(float(loss), ref(_f64(params)), rtol=1e-5)
    mses = ref_matryoshka(_f64(params), x64, 0.7, cfg.prefixes)[1]
    assert len(set(np.round(mses, 6))) == 4  # every prefix reconstructs differently
    np.testing.assert_allclose(float(aux["mse"]), mses[-1], rtol=1e-5)  # the full dictionary's
    for i, m in enumerate(mses[:-1]):
        np.testing.assert_allclose(float(aux[f"mse_prefix{i}"]), m, rtol=1e-5)
    assert "mse_prefix3" not in aux
    _assert_grads_close(g, _fd_grad(ref, _f64(params)))


def test_matryoshka_single_prefix_is_anthropic_2024():
    cfg = _cfg("matryoshka", prefixes=(F,))
    params, x = _random_params(cfg), _x()
    hp = step.default_hparams(cfg, l1_coef=0.7)
    loss, aux, g = _value_and_grad(losses.loss_matryoshka, params, x, hp, None, cfg)
    want, want_aux, want_g = _value_and_grad(losses.loss_anthropic_2024, params, x, hp, None,
                                             _cfg("anthropic_2024"))
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(aux["xhat_BD"]), np.asarray(want_aux["xhat_BD"]),
                               rtol=1e-5, atol=1e-6)
    for name in want_g:
        np.testing.assert_allclose(np.asarray(g[name]), np.asarray(want_g[name]), rtol=1e-5,
                                   atol=1e-6, err_msg=name)


def test_matryoshka_default_prefixes():
    assert model.SAEConfig(variant="matryoshka", d_sae=2048).prefixes == (64, 256, 1024, 2048)
    assert model.SAEConfig(variant="matryoshka", d_sae=16).prefixes == (1, 2, 8, 16)
    assert model.SAEConfig(variant="matryoshka", d_sae=64, prefixes=[4, 16]).prefixes == (
        4, 16, 64)  # lists (as config.json restores them) become tuples; d_sae appended
    assert model.SAEConfig(d_sae=64, prefixes=[4]).prefixes == (4,)  # others: not resolved


def test_towards_2023_loss_and_grads():
    cfg = _cfg("towards_2023")
    params, x = _random_params(cfg), _x()
    hp = step.default_hparams(cfg, l1_coef=0.3)
    loss, _, g = _value_and_grad(losses.loss_towards_2023, params, x, hp, None, cfg)
    ref = lambda p: ref_towards(p, np.asarray(x, np.float64), 0.3)
    np.testing.assert_allclose(float(loss), ref(_f64(params)), rtol=1e-5)
    _assert_grads_close(g, _fd_grad(ref, _f64(params)))


@pytest.mark.parametrize("k", [5, 3])
def test_topk_loss_and_grads_with_auxk(k):
    cfg = _cfg("topk")
    params, x = _random_params(cfg), _x()
    dead = np.zeros(F, bool)
    dead[::3] = True
    hp = step.default_hparams(cfg, aux_coef=0.5, k=k)
    loss, aux, g = _value_and_grad(losses.loss_topk, params, x, hp, jnp.asarray(dead), cfg)
    x64, p64 = np.asarray(x, np.float64), _f64(params)
    ref_loss, ref_auxk, e = ref_topk(p64, x64, k, cfg.k_aux, dead, 0.5)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(float(aux["auxk"]), ref_auxk, rtol=1e-5)
    assert ref_auxk > 0
    fixed = lambda p: ref_topk(p, x64, k, cfg.k_aux, dead, 0.5, e_fixed=e)[0]
    _assert_grads_close(g, _fd_grad(fixed, p64))


def test_topk_auxk_is_zero_without_dead_latents():
    cfg = _cfg("topk")
    hp = step.default_hparams(cfg)
    _, aux = losses.loss_topk(_random_params(cfg), _x(), hp, jnp.zeros(F, bool), cfg)
    assert float(aux["auxk"]) == 0.0


def _dead_mask():
    dead = np.zeros(F, bool)
    dead[::3] = True
    return dead


@pytest.mark.parametrize("k", [5, 3])
def test_batchtopk_loss_and_grads_with_auxk(k):
    cfg = _cfg("batchtopk")
    params, x = _random_params(cfg), _x()
    dead = _dead_mask()
    hp = step.default_hparams(cfg, aux_coef=0.5, k=k)
    loss, aux, g = _value_and_grad(losses.loss_batchtopk, params, x, hp, jnp.asarray(dead), cfg)
    x64, p64 = np.asarray(x, np.float64), _f64(params)
    ref_loss, ref_auxk, e, f, _ = ref_batchtopk(p64, x64, k, cfg.k_aux, dead, 0.5)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(float(aux["auxk"]), ref_auxk, rtol=1e-5)
    assert ref_auxk > 0
    # The selection is over the batch: k·B entries in all, a different number in each row.
    np.testing.assert_allclose(np.asarray(aux["f_BF"]), f, rtol=1e-5, atol=1e-6)
    per_row = np.sum(f > 0, axis=1)
    assert per_row.sum() == k * B and len(set(per_row.tolist())) > 2
    np.testing.assert_allclose(float(aux["min_kept"]), f[f > 0].min(), rtol=1e-5)
    fixed = lambda p: ref_batchtopk(p, x64, k, cfg.k_aux, dead, 0.5, e_fixed=e)[0]
    _assert_grads_close(g, _fd_grad(fixed, p64))  # θ included: the loss never reads it
    assert float(g["threshold"]) == 0.0


def test_batchtopk_min_kept_without_positive_activations():
    cfg = _cfg("batchtopk")
    params = _random_params(cfg)
    params["b_enc_F"] = params["b_enc_F"] - 1e3  # every pre-activation negative: nothing kept
    _, aux = losses.loss_batchtopk(params, _x(), step.default_hparams(cfg), jnp.zeros(F, bool),
                                   cfg)
    assert float(aux["min_kept"]) == 0.0 and not np.any(np.asarray(aux["f_BF"]))


def test_matryoshka_batchtopk_loss_and_grads():
    cfg = _cfg("matryoshka_batchtopk", prefixes=(3, 10, 20))
    assert cfg.prefixes == (3, 10, 20, F)
    params, x = _random_params(cfg), _x()
    dead = _dead_mask()
    hp = step.default_hparams(cfg, aux_coef=0.5)
    loss, aux, g = _value_and_grad(losses.loss_matryoshka_batchtopk, params, x, hp,
                                   jnp.asarray(dead), cfg)
    x64, p64 = np.asarray(x, np.float64), _f64(params)
    ref_loss, ref_auxk, e, f, mses = ref_batchtopk(p64, x64, cfg.k, cfg.k_aux, dead, 0.5,
                                                   cfg.prefixes)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(float(aux["auxk"]), ref_auxk, rtol=1e-5)
    assert ref_auxk > 0 and len(set(np.round(mses, 6))) == 4
    np.testing.assert_allclose(float(aux["mse"]), mses[-1], rtol=1e-5)
    for i, m in enumerate(mses[:-1]):
        np.testing.assert_allclose(float(aux[f"mse_prefix{i}"]), m, rtol=1e-5)
    np.testing.assert_allclose(float(aux["min_kept"]), f[f > 0].min(), rtol=1e-5)
    fixed = lambda p: ref_batchtopk(p, x64, cfg.k, cfg.k_aux, dead, 0.5, cfg.prefixes,
                                    e_fixed=e)[0]
    _assert_grads_close(g, _fd_grad(fixed, p64))


def test_matryoshka_batchtopk_single_prefix_is_batchtopk():
    cfg = _cfg("matryoshka_batchtopk", prefixes=(F,))
    params, x = _random_params(cfg), _x()
    dead = jnp.asarray(_dead_mask())
    hp = step.default_hparams(cfg, aux_coef=0.5)
    loss, aux, g = _value_and_grad(losses.loss_matryoshka_batchtopk, params, x, hp, dead, cfg)
    want, want_aux, want_g = _value_and_grad(losses.loss_batchtopk, params, x, hp, dead,
                                             _cfg("batchtopk"))
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    for name in ("xhat_BD", "f_BF", "auxk", "min_kept"):
        np.testing.assert_allclose(np.asarray(aux[name]), np.asarray(want_aux[name]), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    for name in want_g:
        np.testing.assert_allclose(np.asarray(g[name]), np.asarray(want_g[name]), rtol=1e-5,
                                   atol=1e-6, err_msg=name)


def test_update_threshold_rule():
    rate = jnp.asarray(0.1, jnp.float32)
    upd = lambda t, m: float(step.update_threshold(jnp.float32(t), jnp.float32(m), rate))
    assert upd(0.0, 0.7) == pytest.approx(0.7)  # the first sample sets θ (no pull towards 0)
    assert upd(0.5, 0.7) == pytest.approx(0.52)  # then an EMA
    assert upd(0.5, 0.0) == 0.5 and upd(0.0, 0.0) == 0.0  # nothing kept: θ unchanged


@pytest.mark.parametrize("variant", ["batchtopk", "matryoshka_batchtopk"])
def test_threshold_tracks_float64_reference_over_steps(variant):
    cfg = _cfg(variant)
    rate = 0.3  # large, so every step moves θ visibly
    hp = step.default_hparams(cfg, lr=1e-2, k=4, threshold_rate=rate, total_steps=100)
    state = step.init_state(cfg, jax.random.key(0))
    assert float(state["params"]["threshold"]) == 0.0
    fn = jax.jit(functools.partial(step.train_step, cfg=cfg))  # no donation: states are reused
    theta, want, got = 0.0, [], []
    for i in range(5):
        x = _x(seed=10 + i)
        p64 = _f64(state["params"])  # the batch rule runs on the params before the update
        z = (np.asarray(x, np.float64) - p64["b_dec_D"]) @ p64["w_enc_DF"] + p64["b_enc_F"]
        f = _np_batchtopk(z, 4)
        theta = ref_threshold_steps(theta, [f[f > 0].min()], rate)[-1]
        state, metrics = fn(state, x, hp)
        want.append(theta)
        got.append(float(state["params"]["threshold"]))
        assert float(metrics["threshold"]) == got[-1]
        np.testing.assert_allclose(float(metrics["l0"]), 4.0)  # the batch rule: k per row on avg
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert len(set(np.round(want, 6))) == 5  # θ moved at every step


@pytest.mark.parametrize("variant", ["batchtopk", "matryoshka_batchtopk"])
def test_batchtopk_inference_encode_uses_threshold(variant):
    cfg = _cfg(variant)
    params, x = _random_params(cfg), _x()
    z = np.asarray(model.preacts_pre_bias(params, x), np.float64)
    theta = float(np.quantile(z[z > 0], 0.6))
    params["threshold"] = jnp.asarray(theta, jnp.float32)
    f = np.asarray(model.encode(cfg, params, x))
    np.testing.assert_allclose(f, np.where(z > theta, z, 0.0), rtol=1e-5, atol=1e-6)
    assert 0 < np.mean(f > 0) < 1
    # A row's code does not depend on the other rows: alone, or in a permuted batch, it is the same.
    for b in (0, 7):
        np.testing.assert_array_equal(np.asarray(model.encode(cfg, params, x[b:b + 1]))[0], f[b])
    perm = np.random.default_rng(0).permutation(B)
    np.testing.assert_array_equal(np.asarray(model.encode(cfg, params, x[perm])), f[perm])
    # The batch rule does depend on them (the reason for θ): row 0 alone keeps k latents.
    batch_rule = np.asarray(model.batchtopk_activation(model.preacts_pre_bias(params, x), cfg.k))
    alone = np.asarray(model.batchtopk_activation(model.preacts_pre_bias(params, x[:1]), cfg.k))
    assert np.sum(alone > 0) == cfg.k and np.sum(batch_rule[0] > 0) != cfg.k
    # Reported activations: f·‖W_dec,i‖, as for every variant.
    np.testing.assert_allclose(np.asarray(model.feature_acts(cfg, params, x)),
                               f * np.asarray(model.decoder_norms(params))[None], rtol=1e-6)
    # θ = 0 (never trained): plain ReLU of the pre-activations.
    params["threshold"] = jnp.zeros((), jnp.float32)
    np.testing.assert_allclose(np.asarray(model.encode(cfg, params, x)), np.maximum(z, 0),
                               rtol=1e-5, atol=1e-6)


def test_jl_loss_and_grads():
    cfg = _cfg("jl")
    params, x = _random_params(cfg), _x()
    hp = step.default_hparams(cfg, l1_coef=0.2, jl_coef=3.0)
    loss, aux, g = _value_and_grad(losses.loss_jl, params, x, hp, None, cfg)
    x64 = np.asarray(x, np.float64)
    ref = lambda p: ref_anthropic(p, x64, 0.2) + 3.0 * ref_jl_penalty(p["w_dec_FD"])
    np.testing.assert_allclose(float(loss), ref(_f64(params)), rtol=1e-5)
    np.testing.assert_allclose(float(aux["jl"]), ref_jl_penalty(_f64(params)["w_dec_FD"]),
                               rtol=1e-5)
    _assert_grads_close(g, _fd_grad(ref, _f64(params)))


def test_jl_penalty_value():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(F, D))
    w[5] = 2.5 * w[4]  # a duplicate direction: |cos| = 1, clipped
    w[7] = -w[6]  # antiparallel counts like parallel (|cos|)
    got = float(losses.jl_penalty(jnp.asarray(w, jnp.float32)))
    np.testing.assert_allclose(got, ref_jl_penalty(w), rtol=1e-4)
    orth = np.eye(D)  # orthogonal directions cost nothing
    assert float(losses.jl_penalty(jnp.asarray(orth, jnp.float32))) == pytest.approx(0, abs=1e-7)
    grad = jax.grad(losses.jl_penalty)(jnp.asarray(w, jnp.float32))
    assert np.all(np.isfinite(np.asarray(grad)))


def test_jumprelu_loss_and_pseudo_gradients():
    eps = 0.3
    cfg = _cfg("jumprelu", jumprelu_bandwidth=eps, jumprelu_threshold_init=0.4)
    params, x = _random_params(cfg), _x()
    hp = step.default_hparams(cfg, l0_coef=0.25)
    loss, aux, g = _value_and_grad(losses.loss_jumprelu, params, x, hp, None, cfg)
    x64, p64 = np.asarray(x, np.float64), _f64(params)
    ref = lambda p: ref_jumprelu(p, x64, 0.25)
    np.testing.assert_allclose(float(loss), ref(p64), rtol=1e-5)
    z = x64 @ p64["w_enc_DF"] + p64["b_enc_F"]
    np.testing.assert_allclose(float(aux["l0"]),
                               np.mean(np.sum(z > np.exp(p64["log_threshold_F"]), 1)), rtol=1e-6)
    # Everything but θ has its true (a.e.) gradient; θ gets the rectangle-kernel pseudo-gradient.
    _assert_grads_close(g, _fd_grad(ref, p64, skip=("log_threshold_F",)))
    want, active = ref_jumprelu_log_threshold_grad(p64, x64, 0.25, eps)
    assert active > 20  # the kernel window is really exercised
    np.testing.assert_allclose(np.asarray(g["log_threshold_F"]), want, rtol=1e-4,
                               atol=1e-5 * np.abs(want).max())


def test_jumprelu_threshold_gradient_single_entry():
    """d/dθ of JumpReLU is −θ/ε inside the window and 0 outside; of Heaviside −1/ε."""
    eps, theta = 0.1, jnp.asarray([1.0], jnp.float32)
    z = jnp.asarray([[1.02], [0.97], [1.2], [0.5]], jnp.float32)
    g_jump = jax.grad(lambda t: jnp.sum(losses.jumprelu(z, t, eps)))(theta)
    g_step = jax.grad(lambda t: jnp.sum(losses.heaviside(z, t, eps)))(theta)
    np.testing.assert_allclose(np.asarray(g_jump), [2 * -1.0 / eps], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g_step), [2 * -1.0 / eps], rtol=1e-6)
    g_z = jax.grad(lambda a: jnp.sum(losses.jumprelu(a, theta, eps)))(z)
    np.testing.assert_array_equal(np.asarray(g_z)[:, 0], [1, 0, 1, 0])


# ----------------------------------------------------------------------------- structure


def test_penalty_uses_decoder_norms():
    cfg = _cfg("anthropic_2024")
    params, x = _random_params(cfg), _x()
    hp = step.default_hparams(cfg, l1_coef=1.0)
    _, aux = losses.loss_anthropic_2024(params, x, hp, None, cfg)
    f, n = np.asarray(aux["f_BF"]), np.asarray(model.decoder_norms(params))
    np.testing.assert_allclose(float(aux["l1"]), np.mean(np.sum(f * n, 1)), rtol=1e-5)
    # Decoder row i × c and encoder column / bias i ÷ c: same x̂, same penalty, different Σf.
    c = 7.0
    scaled = dict(params)
    scaled["w_dec_FD"] = params["w_dec_FD"].at[3].multiply(c)
    scaled["w_enc_DF"] = params["w_enc_DF"].at[:, 3].divide(c)
    scaled["b_enc_F"] = params["b_enc_F"].at[3].divide(c)
    _, aux2 = losses.loss_anthropic_2024(scaled, x, hp, None, cfg)
    np.testing.assert_allclose(np.asarray(aux2["xhat_BD"]), np.asarray(aux["xhat_BD"]),
                               atol=1e-5)
    np.testing.assert_allclose(float(aux2["l1"]), float(aux["l1"]), rtol=1e-5)
    assert abs(float(jnp.sum(aux2["f_BF"])) - float(jnp.sum(aux["f_BF"]))) > 1e-3


def test_topk_selection():
    cfg = _cfg("topk")
    params = _random_params(cfg)
    params["b_enc_F"] = params["b_enc_F"] + 50.0  # every pre-activation positive
    x = _x()
    z = np.asarray(model.preacts_pre_bias(params, x))
    for k in (cfg.k, 3):
        f = np.asarray(model.encode(cfg, params, x, {"k": jnp.asarray(k, jnp.int32)}))
        assert np.all(np.sum(f != 0, axis=1) == k)
        top = np.argsort(-z, axis=1)[:, :k]
        for b in range(B):
            assert set(np.flatnonzero(f[b])) == set(top[b])
            np.testing.assert_allclose(f[b, top[b]], z[b, top[b]], rtol=1e-6)
    f_default = np.asarray(model.encode(cfg, params, x))  # no hp: k = cfg.k
    assert np.all(np.sum(f_default != 0, axis=1) == cfg.k)


def test_sparse_topk_decode_equals_dense_decode():
    """loss_topk decodes from (values, indices): the same x̂ and f as the dense TopK path."""
    cfg = _cfg("topk")
    params, x = _random_params(cfg), _x()
    z = model.preacts_pre_bias(params, x)
    for k in (cfg.k, 2):
        vals, idx = model.topk_select(z, cfg.k, jnp.asarray(k))
        dense = model.topk_activation(z, cfg.k, jnp.asarray(k))
        np.testing.assert_allclose(model.decode_sparse(params, vals, idx),
                                   model.decode(params, dense), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(model.scatter_topk(z, vals, idx), dense)


@pytest.mark.parametrize("num_dead", [10, 4])
def test_auxk_selection(num_dead):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(B, F)) + 10.0  # all positive
    dead = np.zeros(F, bool)
    dead[rng.choice(F, num_dead, replace=False)] = True
    k_aux = 6
    f = np.asarray(losses.auxk_activation(jnp.asarray(z, jnp.float32), jnp.asarray(dead), k_aux))
    assert not np.any(f[:, ~dead])  # live latents never used
    assert np.all(np.sum(f != 0, axis=1) == min(k_aux, num_dead))
    masked = np.where(dead[None], z, -np.inf)
    for b in range(B):
        want = set(np.argsort(-masked[b])[: min(k_aux, num_dead)])
        assert set(np.flatnonzero(f[b])) == want


@pytest.mark.parametrize("variant",
                         ["anthropic_2024", "towards_2023", "jl", "jumprelu", "matryoshka"])
def test_fold_decoder_norms(variant):
    cfg = _cfg(variant)
    params, x = _random_params(cfg), _x()
    folded = model.fold_decoder_norms(cfg, params)
    np.testing.assert_allclose(np.asarray(model.decoder_norms(folded)), 1.0, rtol=1e-5)
    xhat = model.decode(params, model.encode(cfg, params, x))
    xhat_folded = model.decode(folded, model.encode(cfg, folded, x))
    np.testing.assert_allclose(np.asarray(xhat_folded), np.asarray(xhat), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(model.encode(cfg, folded, x)),
                               np.asarray(model.feature_acts(cfg, params, x)),
                               rtol=1e-4, atol=1e-5)


def test_batch_metrics():
    rng = np.random.default_rng(0)
    x, xhat = rng.normal(size=(B, D)), rng.normal(size=(B, D))
    f = np.maximum(rng.normal(size=(B, F)), 0)
    m = sae_metrics.batch_metrics(*(jnp.asarray(a, jnp.float32) for a in (x, xhat, f)))
    sse = np.sum((x - xhat) ** 2)
    np.testing.assert_allclose(float(m["mse"]), sse / B, rtol=1e-5)
    np.testing.assert_allclose(float(m["nmse"]), sse / np.sum(x**2), rtol=1e-5)
    np.testing.assert_allclose(float(m["explained_variance"]),
                               1 - sse / np.sum((x - x.mean(0)) ** 2), rtol=1e-5)
    np.testing.assert_allclose(float(m["l0"]), np.mean(np.sum(f > 0, 1)), rtol=1e-6)
    np.testing.assert_allclose(float(m["l1"]), np.mean(np.sum(f, 1)), rtol=1e-5)
    assert all(v.dtype == jnp.float32 and v.shape == () for v in m.values())


# ----------------------------------------------------------------------------- schedules


def test_schedules():
    cfg = _cfg("topk")
    hp = step.default_hparams(cfg, lr=1.0, l1_coef=2.0, l0_coef=3.0, jl_coef=1.0, k=2, k_start=5,
                              total_steps=1000, k_anneal_frac=0.5, jl_warmup_frac=0.1)
    at = lambda s: {k: float(v) for k, v in step.scheduled(hp, s).items()}
    assert at(0)["l1_coef"] == 0.0 and at(0)["l0_coef"] == 0.0
    assert at(25)["l1_coef"] == pytest.approx(1.0) and at(25)["l0_coef"] == pytest.approx(1.5)
    assert at(50)["l1_coef"] == pytest.approx(2.0) and at(700)["l1_coef"] == pytest.approx(2.0)
    assert at(0)["lr"] == 1.0 and at(800)["lr"] == pytest.approx(1.0)
    assert at(900)["lr"] == pytest.approx(0.5) and at(1000)["lr"] == pytest.approx(0.0)
    assert [at(s)["k"] for s in (0, 250, 500, 900)] == [5, 4, 2, 2]  # 5 → 2 over 500 steps
    assert at(0)["jl_coef"] == pytest.approx(1.0 + step.JL_BOOST)
    assert at(100)["jl_coef"] == pytest.approx(1.0, abs=1e-6)
    assert at(500)["jl_coef"] == pytest.approx(1.0)
    flat = step.default_hparams(cfg, lr=1.0, l1_warmup_frac=0.0, lr_decay_frac=0.0,
                                total_steps=1000)
    assert float(step.scheduled(flat, 0)["l1_coef"]) == float(flat["l1_coef"])
    assert float(step.scheduled(flat, 1000)["lr"]) == 1.0
    traced = jax.jit(step.scheduled)(hp, jnp.asarray(25, jnp.int32))
    assert float(traced["l1_coef"]) == pytest.approx(1.0)


def test_default_hparams_dtypes():
    for variant in model.VARIANTS:
        cfg = _cfg(variant)
        hp = step.default_hparams(cfg)
        assert tuple(hp) == step.HPARAM_KEYS
        for name, v in hp.items():
            want = jnp.int32 if name in ("k", "k_start") else jnp.float32
            assert v.dtype == want and v.shape == () and not v.weak_type, name
        step.validate_hparams(cfg, hp)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs, field", [
    (dict(variant="topk", d_sae=16, k=17), "k"),
    (dict(variant="topk", d_sae=16, k=4, k_aux=20), "k_aux"),
    (dict(d_sae=0), "d_sae"),
    (dict(d=-1), "d"),
    (dict(variant="sparse_magic"), "variant"),
    (dict(variant="jumprelu", jumprelu_bandwidth=0.0), "jumprelu_bandwidth"),
    (dict(variant="matryoshka", d_sae=16, prefixes=(4, 4)), "prefixes"),
    (dict(variant="matryoshka", d_sae=16, prefixes=(8, 4)), "prefixes"),
    (dict(variant="matryoshka", d_sae=16, prefixes=(0, 8)), "prefixes"),
    (dict(variant="matryoshka", d_sae=16, prefixes=(4, 32)), "prefixes"),
    (dict(variant="matryoshka", d_sae=16, prefixes=(4.0, 8)), "prefixes"),
    (dict(variant="matryoshka", d_sae=16, prefixes=8), "prefixes"),
    (dict(variant="batchtopk", d_sae=16, k=17), "k"),
    (dict(variant="matryoshka_batchtopk", d_sae=16, k=4, k_aux=0), "k_aux"),
    (dict(variant="matryoshka_batchtopk", d_sae=16, k=4, k_aux=8, prefixes=(8, 4)), "prefixes"),
])
def test_invalid_config(kwargs, field):
    with pytest.raises(ValueError, match=f"SAEConfig.{field}="):
        model.SAEConfig(**kwargs)


@pytest.mark.parametrize("override, field", [
    (dict(l1_coef=-1.0), "l1_coef"),
    (dict(lr=0.0), "lr"),
    (dict(l1_warmup_frac=1.5), "l1_warmup_frac"),
    (dict(aux_coef=float("nan")), "aux_coef"),
    (dict(k=9), "k"),
    (dict(k_start=0), "k_start"),
    (dict(threshold_rate=1.5), "threshold_rate"),
])
def test_validate_hparams(override, field):
    cfg = _cfg("topk", k=8)
    with pytest.raises(ValueError, match=f"hyper-parameter {field}="):
        step.validate_hparams(cfg, step.default_hparams(cfg, **override))
    cfg = _cfg("batchtopk", k=8)
    with pytest.raises(ValueError, match=f"hyper-parameter {field}="):
        step.validate_hparams(cfg, step.default_hparams(cfg, **override))


def test_unknown_hparam():
    with pytest.raises(ValueError, match="l2_coef"):
        step.default_hparams(_cfg("anthropic_2024"), l2_coef=1.0)


# ----------------------------------------------------------------------------- train step


def _jit_step(cfg):
    return jax.jit(functools.partial(step.train_step, cfg=cfg), donate_argnums=0)


@pytest.mark.parametrize("variant", model.VARIANTS)
def test_train_step_runs(variant):
    cfg = _cfg(variant)
    state = step.init_state(cfg, jax.random.key(0))
    state["steps_since_fired_F"] = jnp.full((F,), 5, jnp.int32)  # all dead: AuxK active
    hp = step.default_hparams(cfg, lr=1e-3, total_steps=100)
    x = _x(n=4)  # few rows, so some features do not fire
    # What fired is what the loss coded (for batchtopk variants the batch rule, not `encode`).
    _, aux = losses.LOSSES[variant](state["params"], x, step.scheduled(hp, 0),
                                    jnp.ones(F, bool), cfg)
    fired = np.any(np.asarray(aux["f_BF"]) > 0, axis=0)
    assert fired.any() and not fired.all()
    fn = _jit_step(cfg)
    new, metrics = fn(state, x, hp)
    want_keys = {"loss", "mse", "nmse", "explained_variance", "l0", "l1", "lr", "l1_coef",
                 "dead_fraction", "grad_norm"}
    want_keys |= {"topk": {"auxk", "k"}, "jl": {"jl"}, "jumprelu": {"l0"},
                  "matryoshka": {"mse_prefix0", "mse_prefix2"},
                  "batchtopk": {"auxk", "k", "min_kept", "threshold"},
                  "matryoshka_batchtopk": {"auxk", "k", "min_kept", "threshold", "mse_prefix0",
                                           "mse_prefix2"}}.get(variant, set())
    assert set(metrics) >= want_keys
    for name, v in metrics.items():
        assert v.dtype == jnp.float32 and v.shape == () and np.isfinite(float(v)), name
    np.testing.assert_array_equal(np.asarray(new["steps_since_fired_F"]), np.where(fired, 0, 6))
    assert int(new["step"]) == 1
    np.testing.assert_allclose(float(metrics["dead_fraction"]), np.mean(~fired))
    if variant in model.TOPK_FAMILY:
        assert float(metrics["auxk"]) > 0
    if variant in model.BATCH_TOPK:  # θ took the first batch's smallest kept activation
        f_kept = np.asarray(aux["f_BF"])
        np.testing.assert_allclose(float(metrics["threshold"]), f_kept[f_kept > 0].min(),
                                   rtol=1e-6)
    new, _ = fn(new, x, hp)  # the donated output feeds the next step
    assert int(new["step"]) == 2


def test_towards_step_keeps_unit_decoder_rows():
    cfg = _cfg("towards_2023")
    state = step.init_state(cfg, jax.random.key(0))
    hp = step.default_hparams(cfg, lr=1e-2, total_steps=100)
    fn = _jit_step(cfg)
    for i in range(3):
        state, _ = fn(state, _x(seed=i), hp)
    np.testing.assert_allclose(np.asarray(model.decoder_norms(state["params"])), 1.0, rtol=1e-5)


def test_project_out_parallel():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(F, D)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(F, D)), jnp.float32)
    p = np.asarray(step.project_out_parallel(w, g))
    u = np.asarray(w) / np.linalg.norm(np.asarray(w), axis=1, keepdims=True)
    np.testing.assert_allclose(np.sum(p * u, 1), 0.0, atol=1e-5)
    parallel = np.asarray(g) - p  # what was removed lies along each row
    np.testing.assert_allclose(parallel, np.sum(np.asarray(g) * u, 1)[:, None] * u, atol=1e-5)


def _toy_batch(rng, n, dict_KD):
    """Sparse codes (3 of K active) times a fixed dictionary, scaled to E‖x‖ ≈ √d."""
    codes = np.zeros((n, dict_KD.shape[0]))
    for row in codes:
        row[rng.choice(dict_KD.shape[0], 3, replace=False)] = rng.uniform(0.5, 2.0, 3)
    x = codes @ dict_KD
    return jnp.asarray(x * np.sqrt(D) / np.mean(np.linalg.norm(x, axis=1)), jnp.float32)


@pytest.mark.parametrize("variant, overrides", [
    ("anthropic_2024", dict(lr=3e-3, l1_coef=0.05)),
    ("topk", dict(lr=3e-3)),
    ("batchtopk", dict(lr=3e-3)),
    ("matryoshka_batchtopk", dict(lr=3e-3)),
])
def test_loss_decreases_on_toy_data(variant, overrides):
    cfg = _cfg(variant, d_sae=64, k=4, k_aux=8, dead_steps=20)
    rng = np.random.default_rng(0)
    dict_KD = rng.normal(size=(24, D))
    dict_KD /= np.linalg.norm(dict_KD, axis=1, keepdims=True)
    hp = step.default_hparams(cfg, total_steps=50, l1_warmup_frac=0.0, lr_decay_frac=0.0,
                              **overrides)
    x_eval = _toy_batch(rng, 512, dict_KD)
    loss_fn = losses.LOSSES[variant]
    eval_loss = lambda st: float(loss_fn(st["params"], x_eval, hp, jnp.zeros(64, bool), cfg)[0])
    state = step.init_state(cfg, jax.random.key(0))
    before = eval_loss(state)
    fn = _jit_step(cfg)
    for _ in range(50):
        state, metrics = fn(state, _toy_batch(rng, 256, dict_KD), hp)
    after = eval_loss(state)
    assert after < 0.6 * before, (before, after)
    assert np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("variant", ["anthropic_2024", "topk", "batchtopk"])
def test_vmapped_step_matches_individual_steps(variant):
    cfg = _cfg(variant)
    states = [step.init_state(cfg, jax.random.key(i)) for i in range(3)]
    hps = [step.default_hparams(cfg, lr=lr, l1_coef=c, k=k, total_steps=100)
           for lr, c, k in ((1e-3, 0.5, 5), (3e-3, 1.0, 4), (1e-2, 2.0, 2))]
    x = _x(n=32)
    one = jax.jit(functools.partial(step.train_step, cfg=cfg))
    want = [one(s, x, h) for s, h in zip(states, hps, strict=True)]
    stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
    swept = jax.jit(jax.vmap(functools.partial(step.train_step, cfg=cfg), in_axes=(0, None, 0)))
    got_states, got_metrics = swept(stack(states), x, stack(hps))
    for i, (w_state, w_metrics) in enumerate(want):
        member = jax.tree.map(lambda a, i=i: a[i], (got_states, got_metrics))
        for a, b in zip(jax.tree.leaves(member), jax.tree.leaves((w_state, w_metrics)),
                        strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- resampling


def test_resample_dead():
    cfg = _cfg("towards_2023", d_sae=16)
    state = step.init_state(cfg, jax.random.key(0))
    hp = step.default_hparams(cfg, lr=1e-2, total_steps=100)
    fn = _jit_step(cfg)
    for i in range(2):  # nonzero Adam moments everywhere
        state, _ = fn(state, _x(seed=i), hp)
    dead_idx = np.array([3, 7])
    dead = np.zeros(16, bool)
    dead[dead_idx] = True
    state["steps_since_fired_F"] = jnp.asarray(np.where(dead, 5, 1), jnp.int32)
    rng = np.random.default_rng(0)
    x_ND = rng.normal(size=(64, D))
    big = [10, 20]  # two inputs with far larger error: sampling ∝ loss² picks them
    x_ND[big] = 1000.0 * rng.normal(size=(2, D))
    before = jax.tree.map(np.asarray, state)
    new = jax.jit(functools.partial(step.resample_dead, cfg=cfg))(
        state, jnp.asarray(x_ND, jnp.float32), jax.random.key(1), hp)
    new = jax.tree.map(np.asarray, new)
    p0, p1 = before["params"], new["params"]

    unit_big = x_ND[big] / np.linalg.norm(x_ND[big], axis=1, keepdims=True)
    got_rows = p1["w_dec_FD"][dead_idx]
    np.testing.assert_allclose(np.sort(got_rows, axis=0), np.sort(unit_big, axis=0), rtol=1e-5,
                               atol=1e-6)
    alive_norm = np.mean(np.linalg.norm(p0["w_enc_DF"][:, ~dead], axis=0))
    np.testing.assert_allclose(np.linalg.norm(p1["w_enc_DF"][:, dead_idx], axis=0),
                               0.2 * alive_norm, rtol=1e-5)
    np.testing.assert_allclose(p1["w_enc_DF"][:, dead_idx].T,
                               0.2 * alive_norm * got_rows, rtol=1e-5, atol=1e-7)
    assert np.all(p1["b_enc_F"][dead_idx] == 0)
    # Live features and b_dec untouched.
    np.testing.assert_array_equal(p1["w_dec_FD"][~dead], p0["w_dec_FD"][~dead])
    np.testing.assert_array_equal(p1["w_enc_DF"][:, ~dead], p0["w_enc_DF"][:, ~dead])
    np.testing.assert_array_equal(p1["b_enc_F"][~dead], p0["b_enc_F"][~dead])
    np.testing.assert_array_equal(p1["b_dec_D"], p0["b_dec_D"])
    # Adam moments of the resampled entries are zero; the others are kept.
    adam0 = [s for s in before["opt_state"] if hasattr(s, "mu")][0]
    adam1 = [s for s in new["opt_state"] if hasattr(s, "mu")][0]
    for m0, m1 in ((adam0.mu, adam1.mu), (adam0.nu, adam1.nu)):
        assert np.all(m1["w_enc_DF"][:, dead_idx] == 0) and np.all(m1["b_enc_F"][dead_idx] == 0)
        assert np.all(m1["w_dec_FD"][dead_idx] == 0)
        assert np.any(m0["w_dec_FD"][dead_idx] != 0)
        np.testing.assert_array_equal(m1["w_dec_FD"][~dead], m0["w_dec_FD"][~dead])
        np.testing.assert_array_equal(m1["w_enc_DF"][:, ~dead], m0["w_enc_DF"][:, ~dead])
        np.testing.assert_array_equal(m1["b_dec_D"], m0["b_dec_D"])
    np.testing.assert_array_equal(new["steps_since_fired_F"], np.where(dead, 0, 1))


def test_resample_without_dead_is_identity():
    cfg = _cfg("towards_2023", d_sae=16)
    state = step.init_state(cfg, jax.random.key(0))
    new = jax.jit(functools.partial(step.resample_dead, cfg=cfg))(state, _x(n=20),
                                                                  jax.random.key(1))
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- golden steps


@pytest.mark.parametrize("variant, losses, grad_norm, checksum", [
    ("anthropic_2024", [28.135107, 25.452135, 27.860718], 6.413419, 25.33923),
    ("topk", [21.104465, 18.05759, 19.376762], 19.100609, 87.91796),
])
def test_three_train_steps_match_pinned_numbers_and_trace_once(variant, losses, grad_norm,
                                                                checksum):
    """Adam, global-norm clipping (both gradients exceed 1), the lr and λ schedules and the
    variant's loss, three steps from init, pinned on CPU (jax 0.10.2): any change to the update
    shows here. The step compiles once for all three (hp and state keep their types)."""
    import chex

    chex.clear_trace_counter()
    cfg = model.SAEConfig(variant=variant, d=D, d_sae=F, k=5, k_aux=6, dead_steps=3)
    hp = step.default_hparams(cfg, lr=1e-2, total_steps=10, l1_warmup_frac=0.0, lr_decay_frac=0.0,
                              **({"l1_coef": 1.0} if variant == "anthropic_2024" else {}))

    @chex.assert_max_traces(n=1)
    def one_step(state, x_BD, hp):
        return step.train_step(state, x_BD, hp, cfg=cfg)

    jitted = jax.jit(one_step)
    state, got = step.init_state(cfg, jax.random.key(0)), []
    for s in range(3):
        state, metrics = jitted(state, _x(seed=s), hp)
        got.append(float(metrics["loss"]))
    np.testing.assert_allclose(got, losses, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["grad_norm"]), grad_norm, rtol=1e-4)
    total = sum(float(np.abs(np.asarray(v)).sum()) for v in jax.tree.leaves(state["params"]))
    np.testing.assert_allclose(total, checksum, rtol=1e-5)
    assert int(state["step"]) == 3
