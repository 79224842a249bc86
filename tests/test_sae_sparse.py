"""The sparse SAE step (sae/sparse.py) against the dense one: same loss, gradients and steps.

The dense losses are checked against float64 references in test_sae_math.py; here every sparse
loss must equal its dense loss to float32 round-off, on a batch that fits a rung of the capacity
ladder and on one that overflows it (the dense fallback), alone, inside the train step and inside
a vmapped sweep.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from monosem_jax.sae import encoder_grad, losses, model, sparse, step

B, D, F = 48, 12, 160
RTOL, ATOL = 2e-5, 2e-6


def _cfg(variant, **kw):
    base = dict(variant=variant, d=D, d_sae=F, k=6, k_aux=8, dead_steps=1, sparse_capacity=32,
                prefixes=(20, 80, F) if variant in model.MATRYOSHKA else ())
    base.update(kw)
    return model.SAEConfig(**base)


def _x(seed=1, n=B):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, D)), jnp.float32)


def _params(cfg, seed=0, shift=0.0):
    """Perturbed init; `shift` lowers the encoder bias (fewer active latents per row)."""
    rng = np.random.default_rng(seed)
    params = {k: np.asarray(v) for k, v in model.init_params(cfg, jax.random.key(seed)).items()}
    params["w_enc_DF"] = params["w_enc_DF"] * 10.0 + 0.05 * rng.normal(size=(D, F))
    params["b_enc_F"] = 0.1 * rng.normal(size=F) - shift
    params["b_dec_D"] = 0.1 * rng.normal(size=D)
    params["w_dec_FD"] = params["w_dec_FD"] * rng.uniform(0.5, 2.0, size=(F, 1))
    if "log_threshold_F" in params:  # θ around 0.5; a wide STE band puts entries below θ in it
        params["log_threshold_F"] = np.log(rng.uniform(0.3, 0.7, size=F))
    return {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}


def _hp(cfg, **kw):
    hp = step.default_hparams(cfg, l1_coef=0.7, l0_coef=0.3, jl_coef=0.2, k=5, total_steps=100)
    return step.scheduled({**hp, **{k: jnp.asarray(v, hp[k].dtype) for k, v in kw.items()}}, 99)


def _dead():
    return jnp.arange(F) % 5 == 0  # AuxK active for the TopK family


def _dense(cfg, params, x, hp):
    fn = functools.partial(step.with_code_stats(losses.LOSSES[cfg.variant], B, F), cfg=cfg)
    return jax.value_and_grad(fn, has_aux=True)(params, x, hp, _dead())


def _assert_same(got, want):
    (loss_g, aux_g), grads_g = got
    (loss_w, aux_w), grads_w = want
    np.testing.assert_allclose(float(loss_g), float(loss_w), rtol=RTOL)
    assert set(aux_g) == set(aux_w) and set(grads_g) == set(grads_w)
    for name in grads_w:
        scale = float(jnp.max(jnp.abs(grads_w[name]))) or 1.0
        np.testing.assert_allclose(np.asarray(grads_g[name]) / scale,
                                   np.asarray(grads_w[name]) / scale, atol=5e-6, err_msg=name)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(aux_g), jax.tree.leaves(aux_w),
                            strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=RTOL, atol=ATOL, err_msg=str(path))


def _busiest_row(cfg, params, x):
    pre_BF = model.variant_preacts(cfg, params, x)
    margin_BF = np.asarray(sparse._active_margin(cfg, params, pre_BF))
    return int(np.max(np.sum(margin_BF > 0, axis=1)))


VARIABLE = sorted(sparse.VARIABLE_ACTIVE)


@pytest.mark.parametrize("variant", VARIABLE)
def test_variable_sparse_loss_equals_dense_when_the_batch_fits(variant):
    cfg = _cfg(variant, jumprelu_bandwidth=0.2)
    params, x, hp = _params(cfg, shift=2.2), _x(), _hp(cfg)
    busiest = _busiest_row(cfg, params, x)
    assert 2 <= busiest <= 16, busiest  # a real sparse case, well inside the ladder
    pre_BF = model.variant_preacts(cfg, params, x)
    rung = int(sparse.rung(cfg, sparse.active_counts(cfg, params, pre_BF)))
    assert sparse.capacities(cfg)[rung] >= busiest and rung < len(sparse.capacities(cfg)) - 1
    pre_BF = jax.lax.stop_gradient(model.variant_preacts(cfg, params, x))
    num_c = sparse.capacities(cfg)[rung]
    fn = functools.partial(step.with_code_stats(sparse.SPARSE_LOSSES[variant], B, F), cfg=cfg,
                           pre_BF=pre_BF, num_c=num_c)
    got = jax.value_and_grad(fn, has_aux=True)(params, x, hp, _dead())
    _assert_same(got, _dense(cfg, params, x, hp))
    # ... and the step's dispatch takes that rung, with the same result.
    _assert_same(step.loss_and_grads(params, x, hp, _dead(), cfg), _dense(cfg, params, x, hp))


def test_jumprelu_sparse_threshold_gradient_reaches_inactive_entries_in_the_band():
    """Entries just below θ are inactive but get θ's STE gradient: the sparse step must read
    them too (its margin is z − θ + ε), or dθ would differ from the dense step's."""
    cfg = _cfg("jumprelu", jumprelu_bandwidth=0.2)
    params, x = _params(cfg, shift=2.2), _x()
    pre_BF = np.asarray(model.variant_preacts(cfg, params, x))
    theta_F = np.exp(np.asarray(params["log_threshold_F"]))
    in_band_below = (pre_BF <= theta_F) & (pre_BF > theta_F - 0.1)
    assert in_band_below.sum() >= 5
    g_sparse = step.loss_and_grads(params, x, _hp(cfg), _dead(), cfg)[1]["log_threshold_F"]
    g_dense = _dense(cfg, params, x, _hp(cfg))[1]["log_threshold_F"]
    only_below_F = in_band_below.any(0) & ~(pre_BF > theta_F).any(0)
    assert only_below_F.any() and np.all(np.asarray(g_dense)[only_below_F] != 0)
    np.testing.assert_allclose(np.asarray(g_sparse), np.asarray(g_dense), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", VARIABLE)
def test_overflowing_batch_takes_the_dense_step(variant):
    cfg = _cfg(variant, sparse_capacity=8, jumprelu_bandwidth=0.2)
    params, x, hp = _params(cfg, shift=0.0), _x(), _hp(cfg)
    assert _busiest_row(cfg, params, x) > 8
    pre_BF = model.variant_preacts(cfg, params, x)
    assert int(sparse.rung(cfg, sparse.active_counts(cfg, params, pre_BF))) == len(
        sparse.capacities(cfg)) == 1
    _assert_same(step.loss_and_grads(params, x, hp, _dead(), cfg), _dense(cfg, params, x, hp))


@pytest.mark.parametrize("variant", sorted(model.TOPK_FAMILY))
@pytest.mark.parametrize("k", [5, 6])  # a traced k below the static cfg.k, and equal to it
def test_topk_family_sparse_loss_equals_dense_with_auxk(variant, k):
    cfg = _cfg(variant)
    params, x, hp = _params(cfg), _x(), _hp(cfg, k=k)
    got = step.loss_and_grads(params, x, hp, _dead(), cfg)
    assert float(got[0][1]["auxk"]) > 0
    _assert_same(got, _dense(cfg, params, x, hp))


@pytest.mark.parametrize("variant", VARIABLE)
def test_sparse_loss_has_no_product_over_the_whole_dictionary(variant):
    """The sparse loss and its gradient hold no matmul with a [B, F] operand: the decoder and
    the encoder's weight gradient are gathers and scatter-adds over the C read entries. (The
    dense loss has three: x̂ = f W_dec, its W_dec gradient and the encoder's.)"""
    cfg = _cfg(variant)
    params, x, hp = _params(cfg, shift=2.2), _x(), _hp(cfg)
    pre_BF = model.variant_preacts(cfg, params, x)

    def hlo(loss_fn, **kw):
        fn = functools.partial(loss_fn, cfg=cfg, pre_BF=pre_BF, **kw)
        grad = jax.grad(lambda p: fn(p, x, hp, _dead())[0])
        return jax.jit(grad).lower(params).as_text()

    def big_dots(text):
        return sum(1 for line in text.splitlines()
                   if "dot_general" in line and f"tensor<{B}x{F}xf32>" in line)

    assert big_dots(hlo(losses.LOSSES[variant])) >= 1  # matryoshka: per-prefix slices
    assert big_dots(hlo(sparse.SPARSE_LOSSES[variant], num_c=16)) == 0


@pytest.mark.parametrize("variant", ["anthropic_2024", "jumprelu", "topk", "batchtopk"])
def test_sparse_train_steps_match_dense_steps(variant):
    x = _x()
    states = {}
    for capacity in (32, 0):
        cfg = _cfg(variant, sparse_capacity=capacity, jumprelu_bandwidth=0.2)
        state = step.init_state(cfg, jax.random.key(0))
        state["params"] = _params(cfg, shift=2.2)
        hp = step.default_hparams(cfg, l1_coef=0.7, l0_coef=0.3, k=5, total_steps=100, lr=1e-3)
        fn = jax.jit(functools.partial(step.train_step, cfg=cfg))
        for _ in range(3):
            state, metrics = fn(state, x, hp)
        states[capacity] = (state, metrics)
    for a, b in zip(jax.tree.leaves(states[32]), jax.tree.leaves(states[0]), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=1e-5, atol=1e-6)


def test_vmapped_members_take_one_branch_and_match_their_single_steps():
    """A sweep's members may fit different rungs; the named member axis makes them all take the
    busiest one's (a sparse rung or the dense step), which changes no member's result."""
    cfg = _cfg("anthropic_2024")
    x = _x()
    members = []
    for i, shift in enumerate((1.2, 0.0)):  # the first fits a rung, the second overflows
        state = step.init_state(cfg, jax.random.key(i))
        state["params"] = _params(cfg, seed=i, shift=shift)
        members.append((state, step.default_hparams(cfg, l1_coef=0.7, total_steps=10)))
    one = jax.jit(functools.partial(step.train_step, cfg=cfg))
    want = [one(s, x, h) for s, h in members]
    stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)  # noqa: E731
    swept = jax.jit(jax.vmap(functools.partial(step.train_step, cfg=cfg, member_axis="m"),
                             in_axes=(0, None, 0), axis_name="m"))
    got = swept(stack([s for s, _ in members]), x, stack([h for _, h in members]))
    for i, w in enumerate(want):
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda a, i=i: a[i], got)),
                        jax.tree.leaves(w), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_attach_rows_and_pairs_gradients_equal_the_dense_product():
    rng = np.random.default_rng(0)
    x_BD = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    w_DF = jnp.asarray(rng.normal(size=(4, 9)), jnp.float32)
    b_F = jnp.asarray(rng.normal(size=9), jnp.float32)
    c_BK = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    idx_BK = jax.lax.top_k(x_BD @ w_DF + b_F[None], 3)[1]
    rows_S = jnp.repeat(jnp.arange(6), 3)

    def loss(read, x, w, b):
        pre = jax.lax.stop_gradient(x @ w + b[None])
        return jnp.sum(read(pre, x, w, b) * c_BK)

    reads = {
        "reference": lambda pre, x, w, b: jnp.take_along_axis(x @ w + b[None], idx_BK, axis=1),
        "dense": lambda pre, x, w, b: jnp.take_along_axis(
            encoder_grad.attach_dense(pre, x, w, b), idx_BK, axis=1),
        "rows": lambda pre, x, w, b: encoder_grad.attach_rows(pre, x, w, b, idx_BK),
        "pairs": lambda pre, x, w, b: encoder_grad.attach_pairs(
            pre, x, w, b, rows_S, idx_BK.reshape(-1)).reshape(6, 3),
    }
    grads = {name: jax.grad(functools.partial(loss, read), argnums=(0, 1, 2))(x_BD, w_DF, b_F)
             for name, read in reads.items()}
    for name in ("dense", "rows", "pairs"):
        for a, b in zip(grads[name], grads["reference"], strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_capacity_ladder_and_config():
    assert sparse.capacities(_cfg("anthropic_2024", d_sae=4096, sparse_capacity=-1)) == (
        8, 16, 32)
    assert sparse.capacities(_cfg("anthropic_2024", sparse_capacity=100)) == (8, 16, 32, 64, 100)
    assert sparse.capacities(_cfg("anthropic_2024", sparse_capacity=5)) == (5,)
    assert not sparse.uses_sparse_step(_cfg("anthropic_2024", sparse_capacity=0))
    assert not sparse.uses_sparse_step(_cfg("anthropic_2024", sparse_capacity=F))
    assert not sparse.uses_sparse_step(_cfg("anthropic_2024", sparse_capacity=-1))  # F/128 = 1
    assert sparse.uses_sparse_step(_cfg("topk", sparse_capacity=-1))
    assert not sparse.uses_sparse_step(_cfg("topk", sparse_capacity=0))
    with pytest.raises(ValueError, match="sparse_capacity=-2 is invalid"):
        _cfg("topk", sparse_capacity=-2)


@pytest.mark.parametrize("variant", ["anthropic_2024", "topk"])
def test_bfloat16_encoder_product_is_close_to_float32(variant):
    """matmul_dtype="bfloat16" rounds only the encoder product's operands (float32
    accumulation): the loss stays within bfloat16's ~3 significant digits and the gradients
    point the same way (TopK may select a different latent where two are within rounding),
    all float32."""
    x = _x()
    got = {}
    for dtype in ("float32", "bfloat16"):
        cfg = _cfg(variant, matmul_dtype=dtype)
        params, hp = _params(cfg), _hp(cfg)
        pre_BF = model.variant_preacts(cfg, params, x)
        assert pre_BF.dtype == jnp.float32
        got[dtype] = step.loss_and_grads(params, x, hp, jnp.zeros(F, bool), cfg)
    (loss32, _), g32 = got["float32"]
    (loss16, _), g16 = got["bfloat16"]
    assert float(loss16) != float(loss32)  # the option is in effect
    np.testing.assert_allclose(float(loss16), float(loss32), rtol=2e-2)
    for name in g32:
        assert g16[name].dtype == jnp.float32
        a, b = np.ravel(g16[name]), np.ravel(g32[name])
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.98, name
    with pytest.raises(ValueError, match="matmul_dtype='float16' is invalid"):
        _cfg(variant, matmul_dtype="float16")
