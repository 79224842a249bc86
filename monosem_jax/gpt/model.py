"""Decoder-only pre-LN transformer (Flax Linen) with named hooks for capture and intervention.

Every block exposes the hook points of the usual interpretability naming:

  blocks.{i}.hook_resid_pre   residual stream entering block i          [B, L, D]
  blocks.{i}.hook_attn_out    attention output added to the residual    [B, L, D]
  blocks.{i}.hook_resid_mid   residual after attention                  [B, L, D]
  blocks.{i}.hook_mlp_post    MLP hidden activations after the GELU     [B, L, F]
  blocks.{i}.hook_mlp_out     MLP output added to the residual          [B, L, D]
  blocks.{i}.hook_resid_post  residual leaving block i                  [B, L, D]

`forward(cfg, params, tokens, capture=..., intervene=...)` returns the logits and the captured
values; an intervention replaces a hook's value by `fn(value)` before anything downstream reads it
(so SAE splicing, ablation and steering are all just interventions). Under `jit`, computations
that no requested output depends on (e.g. the layers after the last captured hook when the logits
are dropped) are removed by XLA, so a capture-only forward costs only what it needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from monosem_jax import stage_config

HOOK_KINDS = (
    "hook_resid_pre",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_post",
    "hook_mlp_out",
    "hook_resid_post",
)

Intervention = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Static model shape; a frozen dataclass so it can be a `jit` static argument."""

    vocab_size: int
    context_len: int
    d_model: int
    n_layers: int
    n_heads: int
    d_mlp: int
    positional: str = "learned"  # "learned" | "rope"
    tied_embeddings: bool = True
    compute_dtype: str = "float32"  # "float32" | "bfloat16" (params stay float32)
    ln_eps: float = 1e-5

    def __post_init__(self):
        sizes = ("vocab_size", "context_len", "d_model", "n_layers", "n_heads", "d_mlp")
        stage_config.positive(self, sizes, "model.")
        stage_config.check(self.d_model % self.n_heads == 0, "model.n_heads", self.n_heads,
                           f"a divisor of model.d_model={self.d_model}")
        stage_config.one_of("model.positional", self.positional, ("learned", "rope"))
        stage_config.check(self.positional != "rope" or (self.d_model // self.n_heads) % 2 == 0,
                           "model.positional", self.positional,
                           f"'learned' (rope needs an even head dimension, not "
                           f"{self.d_model // self.n_heads})")
        stage_config.one_of("model.compute_dtype", self.compute_dtype, ("float32", "bfloat16"))
        stage_config.positive(self, ("ln_eps",), "model.")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def dtype(self):
        return jnp.dtype(self.compute_dtype)


def hook_names(cfg: GPTConfig) -> tuple[str, ...]:
    """All hook names of a model, in execution order."""
    return tuple(f"blocks.{i}.{kind}" for i in range(cfg.n_layers) for kind in HOOK_KINDS)


def hook_dim(cfg: GPTConfig, name: str) -> int:
    """Width of a hook's activations (d_mlp for hook_mlp_post, d_model otherwise)."""
    return cfg.d_mlp if name.endswith("hook_mlp_post") else cfg.d_model


def check_hooks(cfg: GPTConfig, names: Iterable[str]) -> None:
    """Raises ValueError naming the first unknown hook."""
    valid = set(hook_names(cfg))
    for name in names:
        if name not in valid:
            raise ValueError(
                f"unknown hook {name!r}; hooks are blocks.<0..{cfg.n_layers - 1}>.<"
                + "|".join(HOOK_KINDS)
                + ">"
            )


class _Hooks:
    """Applies interventions and records captures while the model is traced."""

    def __init__(self, capture: Iterable[str], intervene: Mapping[str, Intervention] | None):
        self.capture = frozenset(capture)
        self.intervene = dict(intervene or {})
        self.captured: dict[str, jax.Array] = {}

    def __call__(self, name: str, x: jax.Array) -> jax.Array:
        if name in self.intervene:
            x = self.intervene[name](x).astype(x.dtype)
        if name in self.capture:
            self.captured[name] = x
        return x


def causal_attention(q_BLHZ: jax.Array, k_BLHZ: jax.Array, v_BLHZ: jax.Array) -> jax.Array:
    """Softmax attention with a causal mask; scores and softmax in float32."""
    scale = q_BLHZ.shape[-1] ** -0.5
    scores_BHLL = jnp.einsum("blhz,bmhz->bhlm", q_BLHZ, k_BLHZ).astype(jnp.float32) * scale
    length = q_BLHZ.shape[1]
    causal_LL = jnp.tril(jnp.ones((length, length), dtype=bool))
    scores_BHLL = jnp.where(causal_LL, scores_BHLL, jnp.finfo(jnp.float32).min)
    probs_BHLL = jax.nn.softmax(scores_BHLL, axis=-1).astype(v_BLHZ.dtype)
    return jnp.einsum("bhlm,bmhz->blhz", probs_BHLL, v_BLHZ)


def rope(x_BLHZ: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (rotate-half convention) over the head dimension."""
    length, d_head = x_BLHZ.shape[1], x_BLHZ.shape[-1]
    inv_freq_Z = 1.0 / base ** (jnp.arange(0, d_head, 2, dtype=jnp.float32) / d_head)
    angles_LZ = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq_Z[None, :]
    cos_1L1Z = jnp.cos(angles_LZ)[None, :, None, :]
    sin_1L1Z = jnp.sin(angles_LZ)[None, :, None, :]
    x1, x2 = jnp.split(x_BLHZ.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos_1L1Z - x2 * sin_1L1Z, x2 * cos_1L1Z + x1 * sin_1L1Z], axis=-1)
    return out.astype(x_BLHZ.dtype)


def _dense(features: int, cfg: GPTConfig, name: str, std: float = 0.02):
    """A Dense layer applied to [B, L, X] as one 2-D matmul [B*L, X] (faster on XLA:CPU:
    experiments/bench_lm.py measured -8% CPU time per step against 3-D inputs)."""
    layer = nn.Dense(
        features,
        dtype=cfg.dtype,
        kernel_init=nn.initializers.normal(std),
        bias_init=nn.initializers.zeros,
        name=name,
    )
    return lambda x_BLX: layer(x_BLX.reshape(-1, x_BLX.shape[-1])).reshape(
        *x_BLX.shape[:-1], features
    )


class Block(nn.Module):
    cfg: GPTConfig
    index: int

    @nn.compact
    def __call__(self, x_BLD: jax.Array, hooks: _Hooks) -> jax.Array:
        cfg = self.cfg
        prefix = f"blocks.{self.index}."
        # GPT-2: residual-writing projections get std 0.02 / sqrt(2 * n_layers).
        out_std = 0.02 / (2 * cfg.n_layers) ** 0.5
        x_BLD = hooks(prefix + "hook_resid_pre", x_BLD)

        h_BLD = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=cfg.dtype, name="ln_attn")(x_BLD)
        qkv_BL3HZ = _dense(3 * cfg.d_model, cfg, "qkv")(h_BLD).reshape(
            *h_BLD.shape[:2], 3, cfg.n_heads, cfg.d_head
        )
        q_BLHZ, k_BLHZ, v_BLHZ = (qkv_BL3HZ[:, :, i] for i in range(3))
        if cfg.positional == "rope":
            q_BLHZ, k_BLHZ = rope(q_BLHZ), rope(k_BLHZ)
        attn_BLHZ = causal_attention(q_BLHZ, k_BLHZ, v_BLHZ)
        attn_BLD = _dense(cfg.d_model, cfg, "attn_out", out_std)(
            attn_BLHZ.reshape(*attn_BLHZ.shape[:2], cfg.d_model)
        )
        attn_BLD = hooks(prefix + "hook_attn_out", attn_BLD)
        x_BLD = hooks(prefix + "hook_resid_mid", x_BLD + attn_BLD)

        h_BLD = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=cfg.dtype, name="ln_mlp")(x_BLD)
        h_BLF = nn.gelu(_dense(cfg.d_mlp, cfg, "mlp_in")(h_BLD))
        h_BLF = hooks(prefix + "hook_mlp_post", h_BLF)
        mlp_BLD = hooks(
            prefix + "hook_mlp_out", _dense(cfg.d_model, cfg, "mlp_out", out_std)(h_BLF)
        )
        return hooks(prefix + "hook_resid_post", x_BLD + mlp_BLD)


class GPT(nn.Module):
    cfg: GPTConfig

    @nn.compact
    def __call__(self, tokens_BL: jax.Array, hooks: _Hooks | None = None) -> jax.Array:
        cfg = self.cfg
        hooks = hooks if hooks is not None else _Hooks((), None)
        embed = nn.Embed(
            cfg.vocab_size, cfg.d_model, embedding_init=nn.initializers.normal(0.02), name="embed"
        )
        x_BLD = embed(tokens_BL).astype(cfg.dtype)
        if cfg.positional == "learned":
            pos_LD = self.param(
                "pos_embed", nn.initializers.normal(0.01), (cfg.context_len, cfg.d_model)
            )
            x_BLD = x_BLD + pos_LD[None, : tokens_BL.shape[1]].astype(cfg.dtype)
        for i in range(cfg.n_layers):
            x_BLD = Block(cfg, i, name=f"block_{i}")(x_BLD, hooks)
        x_BLD = nn.LayerNorm(epsilon=cfg.ln_eps, dtype=cfg.dtype, name="ln_final")(x_BLD)
        if cfg.tied_embeddings:
            logits_BLV = embed.attend(x_BLD)
        else:
            logits_BLV = _dense(cfg.vocab_size, cfg, "unembed")(x_BLD)
        return logits_BLV.astype(jnp.float32)


def init_params(cfg: GPTConfig, rng: jax.Array) -> dict:
    """Float32 parameters as a plain nested dict."""
    tokens_BL = jnp.zeros((1, cfg.context_len), jnp.int32)
    return GPT(cfg).init(rng, tokens_BL)["params"]


def forward(
    cfg: GPTConfig,
    params: dict,
    tokens_BL: jax.Array,
    capture: Iterable[str] = (),
    intervene: Mapping[str, Intervention] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Logits [B, L, V] (float32) and the captured hook values {name: array}."""
    capture = tuple(capture)
    check_hooks(cfg, capture + tuple(intervene or {}))
    if tokens_BL.shape[-1] > cfg.context_len:
        raise ValueError(f"sequence length {tokens_BL.shape[-1]} > context_len {cfg.context_len}")
    hooks = _Hooks(capture, intervene)
    logits_BLV = GPT(cfg).apply({"params": params}, tokens_BL, hooks)
    return logits_BLV, hooks.captured


def num_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


def next_token_loss(logits_BLV: jax.Array, targets_BL: jax.Array) -> jax.Array:
    """Mean cross-entropy in nats over every position (logsumexp minus the target logit, which
    never materialises log-probabilities: -5% CPU time per step in experiments/bench_lm.py)."""
    return jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits_BLV.astype(jnp.float32), targets_BL)
    )
