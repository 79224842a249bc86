"""Sampling from the GPT: temperature and top-k, one compiled loop over a fixed-size buffer."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from monosem_jax.gpt import model as gpt_model


def filter_logits(logits_BV: jax.Array, temperature: float, top_k: int) -> jax.Array:
    """Scaled logits with everything below the k-th largest masked to -inf (top_k=0: no mask)."""
    logits_BV = logits_BV / jnp.maximum(temperature, 1e-6)
    if top_k > 0:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    return logits_BV


def sample_loop(
    cfg: gpt_model.GPTConfig,
    params: dict,
    prompt_BL: jax.Array,
    prompt_len: jax.Array,
    rng: jax.Array,
    *,
    num_new: int,
    temperature: float = 1.0,
    top_k: int = 0,
    intervene=None,
    buffer_len: int = 0,
) -> jax.Array:
    """Continues each row of `prompt_BL` (valid up to `prompt_len`) by `num_new` tokens.

    Traceable (jit it, or vmap it over interventions as monosem_jax.intervene.steer does). The
    buffer has `buffer_len` slots (0 = the model's context): position t is predicted from a full
    causal forward over the buffer (later slots are ignored by the mask), which keeps one static
    shape; a buffer just long enough for prompt + continuation saves the rest of the context's
    compute. `temperature` 0 means greedy. `intervene` maps hooks to functions applied at every
    step (or is a tuple of (hook, fn) pairs).
    """
    buffer_len = min(buffer_len or cfg.context_len, cfg.context_len)
    if prompt_BL.shape[1] > buffer_len:
        raise ValueError(f"prompt longer than the buffer ({buffer_len})")
    buf_BL = jnp.zeros((prompt_BL.shape[0], buffer_len), jnp.int32)
    buf_BL = buf_BL.at[:, : prompt_BL.shape[1]].set(prompt_BL.astype(jnp.int32))
    interventions = dict(intervene or ())

    def body(i, carry):
        buf_BL, rng = carry
        pos = prompt_len + i  # the slot being filled
        logits_BLV, _ = gpt_model.forward(cfg, params, buf_BL, intervene=interventions)
        logits_BV = jax.lax.dynamic_index_in_dim(logits_BLV, pos - 1, axis=1, keepdims=False)
        rng, key = jax.random.split(rng)
        greedy_B = jnp.argmax(logits_BV, axis=-1)
        sampled_B = jax.random.categorical(key, filter_logits(logits_BV, temperature, top_k))
        next_B = jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)
        buf_BL = jax.lax.dynamic_update_index_in_dim(buf_BL, next_B, pos, axis=1)
        return buf_BL, rng

    num_new = min(num_new, buffer_len)
    steps = jnp.minimum(num_new, buffer_len - prompt_len)
    buf_BL, _ = jax.lax.fori_loop(0, steps, body, (buf_BL, rng))
    return buf_BL


# `sample_loop` compiled; `intervene` is then a hashable tuple of (hook, fn) pairs (static).
sample = jax.jit(
    sample_loop, static_argnames=("cfg", "num_new", "top_k", "intervene", "buffer_len")
)
