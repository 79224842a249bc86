"""GPT math against float64 NumPy, causality, hooks and interventions, full-size shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from monosem_jax.configs.gpt import tinystories
from monosem_jax.gpt import model as gpt_model
from monosem_jax.gpt import step as gpt_step

SMALL = gpt_model.GPTConfig(
    vocab_size=37, context_len=12, d_model=16, n_layers=2, n_heads=4, d_mlp=24
)


def _numpy_attention(q, k, v):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = np.einsum("blhk,bmhk->bhlm", q, k) / np.sqrt(q.shape[-1])
    length = q.shape[1]
    scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhlm,bmhk->blhk", probs, v)


def test_attention_matches_float64_reference():
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 7, 3, 8))
    got = gpt_model.causal_attention(q, k, v)
    np.testing.assert_allclose(got, _numpy_attention(q, k, v), rtol=1e-5, atol=1e-6)


def test_loss_matches_float64_reference():
    logits = jax.random.normal(jax.random.key(1), (2, 5, 11)) * 3
    targets = jax.random.randint(jax.random.key(2), (2, 5), 0, 11)
    x = np.asarray(logits, np.float64)
    logp = (
        x
        - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - x.max(-1, keepdims=True)
    )
    want = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1).mean()
    np.testing.assert_allclose(gpt_model.next_token_loss(logits, targets), want, rtol=1e-6)


def test_rope_preserves_norms_and_relative_positions():
    x = jax.random.normal(jax.random.key(3), (1, 6, 2, 8))
    y = gpt_model.rope(x)
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    # Same vector at every position: dot products depend only on the offset.
    same = jnp.broadcast_to(x[:, :1], x.shape)
    r = gpt_model.rope(same)[0, :, 0]
    dots = r @ r.T
    np.testing.assert_allclose(dots[0, 2], dots[3, 5], rtol=1e-5)


@pytest.mark.parametrize("positional", ["learned", "rope"])
def test_causality_gradients_of_earlier_logits_ignore_later_tokens(positional):
    cfg = gpt_model.GPTConfig(**{**SMALL.__dict__, "positional": positional})
    params = gpt_model.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (1, cfg.context_len), 0, cfg.vocab_size)
    embeds = jax.nn.one_hot(tokens, cfg.vocab_size)
    t = 5

    def logit_sum_at_t(onehot):
        # Feed embeddings through the one-hot so gradients wrt input positions exist.
        def swap_embed(x):
            return onehot @ params["embed"]["embedding"] + (
                params["pos_embed"][None, : cfg.context_len] if positional == "learned" else 0.0
            )

        logits, _ = gpt_model.forward(
            cfg, params, tokens, intervene={"blocks.0.hook_resid_pre": swap_embed}
        )
        return logits[0, t].sum()

    grads = jax.jit(jax.grad(logit_sum_at_t))(embeds)
    per_position = jnp.abs(grads).sum(-1)[0]
    assert float(per_position[t + 1 :].max()) == 0.0
    assert float(per_position[: t + 1].min()) > 0.0


def test_capture_returns_every_hook_with_its_shape():
    params = gpt_model.init_params(SMALL, jax.random.key(0))
    tokens = jnp.zeros((2, 9), jnp.int32)
    names = gpt_model.hook_names(SMALL)
    _, acts = gpt_model.forward(SMALL, params, tokens, capture=names)
    assert set(acts) == set(names)
    for name in names:
        assert acts[name].shape == (2, 9, gpt_model.hook_dim(SMALL, name))
    # The residual stream composes: resid_post = resid_mid + mlp_out = pre + attn + mlp.
    np.testing.assert_allclose(
        acts["blocks.1.hook_resid_post"],
        acts["blocks.1.hook_resid_pre"]
        + acts["blocks.1.hook_attn_out"]
        + acts["blocks.1.hook_mlp_out"],
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_array_equal(acts["blocks.0.hook_resid_post"], acts["blocks.1.hook_resid_pre"])


def test_identity_intervention_is_exact_and_zero_ablation_changes_logits():
    params = gpt_model.init_params(SMALL, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, SMALL.vocab_size)
    clean, _ = gpt_model.forward(SMALL, params, tokens)
    same, _ = gpt_model.forward(
        SMALL, params, tokens, intervene={"blocks.1.hook_mlp_out": lambda x: x}
    )
    np.testing.assert_array_equal(clean, same)
    ablated, acts = gpt_model.forward(
        SMALL,
        params,
        tokens,
        capture=["blocks.1.hook_mlp_out"],
        intervene={"blocks.1.hook_mlp_out": jnp.zeros_like},
    )
    assert float(jnp.abs(acts["blocks.1.hook_mlp_out"]).max()) == 0.0
    assert float(jnp.abs(ablated - clean).max()) > 1e-4


def test_bad_hooks_and_config_values_are_clear_errors():
    params = gpt_model.init_params(SMALL, jax.random.key(0))
    with pytest.raises(ValueError, match="unknown hook 'blocks.7.hook_resid_post'"):
        gpt_model.forward(
            SMALL, params, jnp.zeros((1, 4), jnp.int32), capture=["blocks.7.hook_resid_post"]
        )
    with pytest.raises(ValueError, match="model.n_heads=3 is invalid; valid: a divisor of"):
        gpt_model.GPTConfig(
            vocab_size=10, context_len=8, d_model=10, n_layers=1, n_heads=3, d_mlp=8
        )
    with pytest.raises(ValueError, match=r"config.model.n_layers=0 is invalid; valid: > 0"):
        gpt_model.GPTConfig(vocab_size=10, context_len=8, d_model=8, n_layers=0, n_heads=2, d_mlp=8)
    with pytest.raises(ValueError, match="positional"):
        gpt_model.GPTConfig(
            vocab_size=10,
            context_len=8,
            d_model=8,
            n_layers=1,
            n_heads=2,
            d_mlp=8,
            positional="alibi",
        )
    with pytest.raises(ValueError, match="learning_rate"):
        gpt_step.TrainConfig(learning_rate=-1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        gpt_step.TrainConfig(steps=10, warmup_steps=10)


def test_gpu_scale_config_shapes_without_compute():
    model_cfg, train_cfg = gpt_step.configs_from(tinystories.get_config())
    state = jax.eval_shape(lambda: gpt_step.init_state(model_cfg, train_cfg))
    n = gpt_model.num_params(state["params"])
    assert 10e6 <= n <= 30e6, n
    tokens = jax.ShapeDtypeStruct((2, model_cfg.context_len), jnp.int32)
    logits, acts = jax.eval_shape(
        lambda p, t: gpt_model.forward(model_cfg, p, t, capture=["blocks.4.hook_resid_post"]),
        state["params"],
        tokens,
    )
    assert logits.shape == (2, model_cfg.context_len, model_cfg.vocab_size)
    assert acts["blocks.4.hook_resid_post"].dtype == jnp.bfloat16
