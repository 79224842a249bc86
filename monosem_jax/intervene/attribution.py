"""Feature attribution against true ablation, as in Scaling Monosemanticity (2024).

The spliced model as a function of the feature activations a [L, F] at the SAE's hook:

  x'(a) = sum_i a_i d_i + (x - sum_i a_i(x) d_i) = x + (a - a(x)) D,

with the bracket (SAE error plus decoder bias) frozen at its clean value. We compute the
right-hand side, whose shift is exactly zero at a = a(x), so target(a(x)) is the clean model's
target bit for bit, and target is differentiable in a (units and d_i as in splice.py).

  attribution_i = sum_t a_{t,i} dT/da_{t,i}          (one backward pass, every feature at once)
  ablation_i    = T(a(x)) - T(a(x) with feature i zeroed at every position)

Attribution is the first-order estimate of the ablation effect, same sign convention: positive
means the feature raises the target. Ablations run for every feature active in the prompt,
vmapped over chunks of features (the LM's layers before the hook do not depend on the vmapped
shift, so vmap computes them once per chunk, not once per feature).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from monosem_jax import metrics_io, stage_config
from monosem_jax.gpt import model as gpt_model
from monosem_jax.intervene import splice
from monosem_jax.sae import artifact as sae_artifact

TARGETS_HELP = (
    "'loss' (mean next-token CE over the prompt), 'loss:last' (CE of the prompt's last token), "
    "'logit:next' (logit of the prompt's last token where it is predicted), 'logit:<token>' "
    "(logit of a token after the prompt: a string that is one token, or an integer token id)"
)


@dataclasses.dataclass(frozen=True)
class Target:
    """A scalar read off the logits: kind 'loss', 'loss_last', 'logit_next' or 'logit'."""

    kind: str
    token: int = -1  # the token whose logit kind 'logit' reads at the last position


def parse_target(model: splice.SplicedModel, text: str) -> Target:
    """The Target that `text` names (see TARGETS_HELP); anything else is a ValueError."""
    text = str(text)
    simple = {"loss": "loss", "loss:last": "loss_last", "logit:next": "logit_next"}
    if text.strip() in simple:
        return Target(simple[text.strip()])
    if not text.startswith("logit:") or not text[len("logit:"):]:
        raise ValueError(f"unknown target {text!r}; use {TARGETS_HELP}")
    token = text[len("logit:"):]  # not stripped: ' the' and 'the' are different tokens
    vocab = model.model_cfg.vocab_size
    if token.strip().isdigit():
        token_id = int(token)
        if not 0 <= token_id < vocab:
            raise ValueError(f"target token id {token_id} out of range 0..{vocab - 1}")
        return Target("logit", token_id)
    ids = model.tok.encode(token).ids
    if len(ids) != 1:
        raise ValueError(
            f"target token {token!r} is {len(ids)} tokens ({model.tok.encode(token).tokens}); "
            "give a string that is exactly one token, or a token id"
        )
    return Target("logit", int(ids[0]))


def describe_target(model: splice.SplicedModel, target: Target) -> str:
    if target.kind == "logit":
        return f"logit of {model.tok.decode([target.token])!r} (id {target.token}) after the prompt"
    return {
        "loss": "mean next-token CE over the prompt",
        "loss_last": "CE of the prompt's last token",
        "logit_next": "logit of the prompt's last token where it is predicted",
    }[target.kind]


def target_value(target: Target, logits_LV: jax.Array, tokens_L: jax.Array) -> jax.Array:
    """The target's scalar value for one prompt's logits (float32)."""
    ce_L = optax.softmax_cross_entropy_with_integer_labels
    if target.kind == "loss":
        return jnp.mean(ce_L(logits_LV[:-1], tokens_L[1:]))
    if target.kind == "loss_last":
        return ce_L(logits_LV[-2], tokens_L[-1])
    if target.kind == "logit_next":
        return logits_LV[-2, tokens_L[-1]]
    return logits_LV[-1, target.token]


# ------------------------------------------------------------------------- pure, jitted core


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything shape- or branch-determining: a hashable static argument of the jitted core."""

    model_cfg: gpt_model.GPTConfig
    target: Target
    # Position 0 (the EOT attention sink, which capture leaves out of the SAE's training data)
    # stays entirely in the frozen error term: no feature is attributed there.
    exclude_first: bool = True


class Bound(NamedTuple):
    """A SplicedModel and target split into the static part and the array pytree."""

    static: Static
    arrays: tuple  # (lm_params, the TrainedSAE: a pytree whose leaves are its arrays)


def bind(model: splice.SplicedModel, target: Target, exclude_first: bool = True) -> Bound:
    return Bound(Static(model.model_cfg, target, exclude_first), (model.lm_params, model.sae))


def _all_directions(static: Static, arrays: tuple) -> jax.Array:
    sae = arrays[1]
    return sae_artifact.feature_directions(sae, jnp.arange(sae.sae_cfg.d_sae))


def _shifted_target(static: Static, arrays: tuple, tokens_L, shift_LD) -> jax.Array:
    """The target with `shift` added to the hook's value (zero shift: the clean model)."""
    logits_1LV, _ = gpt_model.forward(
        static.model_cfg, arrays[0], tokens_L[None],
        intervene={arrays[1].hook: lambda x_1LD: x_1LD + shift_LD[None].astype(x_1LD.dtype)},
    )
    return target_value(static.target, logits_1LV[0], tokens_L)


@functools.partial(jax.jit, static_argnums=0)
def clean(static: Static, arrays: tuple, tokens_L: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(activations a(x) [L, F] at the hook, clean target) of the unmodified LM."""
    logits_1LV, captured = gpt_model.forward(
        static.model_cfg, arrays[0], tokens_L[None], capture=[arrays[1].hook]
    )
    a_LF = sae_artifact.feature_acts(arrays[1], captured[arrays[1].hook])[0]
    if static.exclude_first:
        a_LF = a_LF.at[0].set(0.0)
    return a_LF, target_value(static.target, logits_1LV[0], tokens_L)


@functools.partial(jax.jit, static_argnums=0)
def target_of_acts(static: Static, arrays: tuple, tokens_L, a0_LF, a_LF) -> jax.Array:
    """T(a): the target with activations a at the hook, the clean run's error term a0 frozen."""
    shift_LD = (a_LF - a0_LF) @ _all_directions(static, arrays)
    return _shifted_target(static, arrays, tokens_L, shift_LD)


@functools.partial(jax.jit, static_argnums=0)
def attributions(static: Static, arrays: tuple, tokens_L, a0_LF) -> tuple[jax.Array, jax.Array]:
    """(T(a0), attribution [F]) from one backward pass: sum_t a0_{t,i} dT/da_{t,i}."""
    value, grad_LF = jax.value_and_grad(
        lambda a_LF: target_of_acts(static, arrays, tokens_L, a0_LF, a_LF)
    )(a0_LF)
    return value, jnp.sum(a0_LF * grad_LF, axis=0)


@functools.partial(jax.jit, static_argnums=0)
def ablation_chunk(static: Static, arrays: tuple, tokens_L, a0_LF, ids_K) -> jax.Array:
    """T(a0) - T(a0 with feature k zeroed at every position), for each of ids_K (vmapped)."""
    d_KD = sae_artifact.feature_directions(arrays[1], ids_K)
    value = _shifted_target(static, arrays, tokens_L, jnp.zeros((tokens_L.shape[0], d_KD.shape[1])))

    def ablated(i, d_D):  # removing a_i d_i is a rank-1 shift: no [L, F] x [F, D] per feature
        return _shifted_target(static, arrays, tokens_L, -a0_LF[:, i, None] * d_D[None])

    return value - jax.vmap(ablated)(ids_K, d_KD)


def ablations(bound: Bound, tokens_L, a0_LF, ids_K: np.ndarray, chunk: int) -> np.ndarray:
    """Ablation effects [K] in chunks of `chunk` features, the last chunk padded to one shape."""
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    ids_K = np.asarray(ids_K, np.int32)
    if ids_K.size == 0:
        return np.zeros(0, np.float32)
    padded = np.resize(ids_K, -(-ids_K.size // chunk) * chunk)  # repeats ids; extras dropped
    effects = [
        ablation_chunk(bound.static, bound.arrays, tokens_L, a0_LF, padded[s: s + chunk])
        for s in range(0, padded.size, chunk)
    ]
    return np.concatenate([np.asarray(e) for e in effects])[: ids_K.size]


# ------------------------------------------------------------------------------- per prompt


class Result(NamedTuple):
    """Attribution and ablation of every feature active in one prompt."""

    value: float  # the clean target T(a(x))
    ids_K: np.ndarray  # active features (nonzero at some position), ascending
    attribution_K: np.ndarray
    ablation_K: np.ndarray
    act_sum_K: np.ndarray  # sum over positions of the reported activation
    act_max_K: np.ndarray
    pearson: float
    spearman: float


def correlations(x_K: np.ndarray, y_K: np.ndarray) -> tuple[float, float]:
    """(Pearson, Spearman) of two samples; NaN with fewer than 2 points or a constant one."""
    from scipy import stats

    x_K, y_K = np.asarray(x_K, np.float64), np.asarray(y_K, np.float64)
    if x_K.size < 2 or np.ptp(x_K) == 0 or np.ptp(y_K) == 0:
        return float("nan"), float("nan")
    rx_K, ry_K = stats.rankdata(x_K), stats.rankdata(y_K)
    return float(np.corrcoef(x_K, y_K)[0, 1]), float(np.corrcoef(rx_K, ry_K)[0, 1])


def attribute(bound: Bound, tokens_L: np.ndarray, chunk: int = 64) -> Result:
    """Attribution (one backward pass) and true ablation of each active feature of a prompt."""
    tokens_L = jnp.asarray(tokens_L, jnp.int32)
    a0_LF, _ = clean(bound.static, bound.arrays, tokens_L)
    value, attr_F = attributions(bound.static, bound.arrays, tokens_L, a0_LF)
    a0_LF = np.asarray(a0_LF)
    ids_K = np.flatnonzero(np.any(a0_LF > 0, axis=0)).astype(np.int32)
    ablation_K = ablations(bound, tokens_L, jnp.asarray(a0_LF), ids_K, chunk)
    attribution_K = np.asarray(attr_F)[ids_K]
    pearson, spearman = correlations(attribution_K, ablation_K)
    return Result(
        float(value), ids_K, attribution_K, ablation_K,
        a0_LF[:, ids_K].sum(axis=0), a0_LF[:, ids_K].max(axis=0, initial=0.0),
        pearson, spearman,
    )


def scatter_plot(path: str, attribution_K: np.ndarray, ablation_K: np.ndarray, title: str) -> None:
    """Attribution (x) against ablation effect (y), with the y = x line."""
    import matplotlib

    matplotlib.use("Agg")  # no display; the figure only goes to a file
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(attribution_K, ablation_K, s=8, alpha=0.5, color="tab:blue", lw=0)
    both = np.concatenate([attribution_K, ablation_K, [0.0]])
    lo, hi = float(both.min()), float(both.max())
    ax.plot([lo, hi], [lo, hi], color="tab:red", ls="--", lw=1, label="y = x")
    ax.axhline(0, color="0.7", lw=0.5)
    ax.axvline(0, color="0.7", lw=0.5)
    ax.set_xlabel("attribution  sum_t a dT/da")
    ax.set_ylabel("ablation effect  T(clean) - T(feature zeroed)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- the binary


@dataclasses.dataclass(frozen=True)
class AttributionConfig:
    """Validated settings of `monosem-attribute` (configs/attribution/default.py documents each)."""

    sae_name: str = ""
    prompt: str = ""
    target: str = "loss"  # parsed by parse_target once the tokenizer is loaded
    chunk: int = 64
    top: int = 20
    exclude_first: bool = True
    name: str = ""

    def __post_init__(self):
        stage_config.positive(self, ("chunk", "top"))
        stage_config.path_component("name", self.name, allow_empty=True)  # W/attribution/<name>.*


def _output_name(cfg: AttributionConfig, sae_name: str) -> str:
    if cfg.name:
        return cfg.name
    digest = hashlib.sha1(f"{cfg.prompt}\0{cfg.target}".encode()).hexdigest()[:8]
    return f"{sae_name}_{digest}"


def top_rows(result: Result, top: int) -> list[dict]:
    """The `top` features by |attribution|, largest first, as JSON-ready rows."""
    order = np.argsort(-np.abs(result.attribution_K), kind="stable")[:top]
    return [
        {
            "feature": int(result.ids_K[k]),
            "attribution": float(result.attribution_K[k]),
            "ablation": float(result.ablation_K[k]),
            "act_sum": float(result.act_sum_K[k]),
            "act_max": float(result.act_max_K[k]),
        }
        for k in order
    ]


def attribute_prompt(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """monosem-attribute: one prompt's attribution vs ablation, to W/attribution/<name>.json."""
    t_start = time.time()
    cfg = stage_config.from_config(AttributionConfig, config)
    model = splice.load(workdir, cfg.sae_name)
    target = parse_target(model, cfg.target)
    tokens_1L, _ = splice.tokenize_prompts(model, [cfg.prompt])
    bound = bind(model, target, cfg.exclude_first)
    result = attribute(bound, tokens_1L[0], cfg.chunk)
    rows = top_rows(result, cfg.top)

    print(f"{model.sae.name} @ {model.hook}; target: {describe_target(model, target)} "
          f"= {result.value:.4f}; {result.ids_K.size} active features")
    print(f"{'feature':>8} {'attribution':>12} {'ablation':>12} {'act_sum':>9}")
    for row in rows:
        print(f"{row['feature']:>8} {row['attribution']:>12.5f} {row['ablation']:>12.5f} "
              f"{row['act_sum']:>9.3f}")

    out_dir = os.path.join(workdir, "attribution")
    os.makedirs(out_dir, exist_ok=True)
    name = _output_name(cfg, model.sae.name)
    png = os.path.join(out_dir, f"{name}.png")
    scatter_plot(
        png, result.attribution_K, result.ablation_K,
        f"{model.sae.name}: {describe_target(model, target)}\n{result.ids_K.size} active "
        f"features, Pearson {result.pearson:.3f}, Spearman {result.spearman:.3f}",
    )
    summary = {
        "sae_name": model.sae.name,
        "hook": model.hook,
        "target": cfg.target,
        "target_value": result.value,
        "num_tokens": int(tokens_1L.shape[1]),
        "active_features": int(result.ids_K.size),
        "pearson": _finite(result.pearson),
        "spearman": _finite(result.spearman),
        "top": rows,
        "json": os.path.join(out_dir, f"{name}.json"),
        "png": png,
        "wall_s": time.time() - t_start,
    }
    metrics_io.write_json_atomic(summary["json"], {
        **summary,
        "prompt": cfg.prompt,
        "tokens": tokens_1L[0].tolist(),
        "exclude_first": cfg.exclude_first,
        "features": result.ids_K.tolist(),
        "attribution": result.attribution_K.tolist(),
        "ablation": result.ablation_K.tolist(),
        "act_sum": result.act_sum_K.tolist(),
        "act_max": result.act_max_K.tolist(),
    })
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None  # JSON has no NaN
