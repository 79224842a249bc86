"""Steering: generate with SAE features clamped at the hook, several clamp values in one program.

Every clamp value (a dose) runs in the same compiled sampler, vmapped over the values, with the
same random keys: member y and the unsteered baseline draw the same uniforms, so a change in the
text is the clamp's doing and not sampling noise (common random numbers). Within a member the
vmap runs over prompts, and each prompt is continued `num_samples` times.

Clamp values are reported activations (see splice.py); `scale = "max"` reads them as multiples
of each feature's maximum activation on held-out tokens (`max_activations`), as the paper's
"clamped to 10x its maximum" does.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from monosem_jax import batching, config_values, metrics_io, stage_config
from monosem_jax.analysis import features
from monosem_jax.gpt import model as gpt_model
from monosem_jax.gpt import sample as gpt_sample
from monosem_jax.intervene import splice
from monosem_jax.sae import artifact as sae_artifact

SEPARATOR = "||"  # between prompts in a config string


@dataclasses.dataclass(frozen=True)
class SteerConfig:
    """Validated settings of `monosem-steer` (configs/steer/default.py documents each)."""

    sae_name: str
    prompts: tuple[str, ...]
    features: tuple[int, ...]
    clamp_values: tuple[float, ...]
    scale: str = "max"
    num_samples: int = 4
    num_new: int = 40
    temperature: float = 1.0
    top_k: int = 0
    seed: int = 0
    max_tokens: int = 65536
    name: str = ""

    def __post_init__(self):
        stage_config.check(bool(self.features), "features", self.features,
                           "the feature ids to clamp, e.g. 12,40")
        stage_config.check(bool(self.clamp_values) and bool(np.all(np.isfinite(self.clamp_values))),
                           "clamp_values", self.clamp_values, "finite numbers, e.g. -2,2,5,10")
        stage_config.one_of("scale", self.scale, ("max", "absolute"))
        stage_config.positive(self, ("num_samples", "num_new", "max_tokens"))
        stage_config.non_negative(self, ("temperature",), note="0 = greedy")
        stage_config.non_negative(self, ("top_k",), note="0 = all")
        stage_config.non_negative(self, ("seed",))
        stage_config.path_component("name", self.name, allow_empty=True)  # W/steer/<name>.*


def steer_config_from(config: ml_collections.ConfigDict) -> SteerConfig:
    """The frozen SteerConfig of a ConfigDict (one clear ValueError per bad value)."""
    return stage_config.from_config(
        SteerConfig, config,
        prompts=tuple(str(config.prompts).split(SEPARATOR)),
        features=config_values.int_tuple("features", config.features),
        # As the clamp applies them: float32.
        clamp_values=tuple(np.float32(config_values.float_tuple("clamp_values",
                                                                config.clamp_values)).tolist()),
    )


# ------------------------------------------------------------------------------- device code


@functools.partial(jax.jit, static_argnames="model_cfg")
def _max_acts(lm_params, sae, tokens_BL, ids_K, *, model_cfg):
    _, cap = gpt_model.forward(model_cfg, lm_params, tokens_BL, capture=[sae.hook])
    a_BLK = sae_artifact.feature_acts(sae, cap[sae.hook])[..., ids_K]
    # Position 0 of each window (the attention sink, never in SAE training) left out, as eval.
    return jnp.max(a_BLK[:, 1:], axis=(0, 1))


def max_activations(model: splice.SplicedModel, workdir: str, ids_K: np.ndarray,
                    max_tokens: int = 65536, batch_size: int = 16) -> np.ndarray:
    """Each feature's maximum reported activation [K] over held-out eval windows."""
    windows_WL = features.windows(workdir, "eval", model.model_cfg.context_len, max_tokens)
    if windows_WL.shape[0] == 0:
        raise ValueError("the eval split is shorter than one context; cannot scale by max")
    best_K = np.zeros(len(ids_K), np.float32)
    # One compiled shape: a repeated last window in the last batch changes no maximum.
    for _, tokens_BL, _ in batching.fixed_batches(windows_WL, batch_size):
        got_K = _max_acts(model.lm_params, model.sae, tokens_BL, jnp.asarray(ids_K),
                          model_cfg=model.model_cfg)
        best_K = np.maximum(best_K, np.asarray(got_K))
    return best_K


@functools.partial(
    jax.jit,
    static_argnames=("model_cfg", "num_samples", "num_new", "top_k", "buffer_len"),
)
def generate(lm_params, sae, tokens_PL, lengths_P, ids_K, values_YK, active_Y, rng,
             temperature, *, model_cfg, num_samples, num_new, top_k, buffer_len):
    """Token buffers [Y, P, N, buffer_len]: prompt p continued N times under clamp member y.

    Member y clamps features ids_K to values_YK[y] where active_Y[y] (else: unsteered). Every
    member uses the same keys, so members differ only through their clamps.
    """
    keys_P = jax.random.split(rng, tokens_PL.shape[0])

    def one(values_K, active, prompt_L, length, key):
        prompt_NL = jnp.broadcast_to(prompt_L, (num_samples, prompt_L.shape[0]))
        steer = {sae.hook: lambda x: splice.clamp(sae, x, ids_K, values_K, active)}
        return gpt_sample.sample_loop(
            model_cfg, lm_params, prompt_NL, length, key, num_new=num_new,
            temperature=temperature, top_k=top_k, intervene=steer, buffer_len=buffer_len,
        )

    over_prompts = jax.vmap(one, in_axes=(None, None, 0, 0, 0))
    return jax.vmap(over_prompts, in_axes=(0, 0, None, None, None))(
        values_YK, active_Y, tokens_PL, lengths_P, keys_P
    )


# --------------------------------------------------------------------------------- host code


def continuations(model: splice.SplicedModel, buffers_YPNL: np.ndarray, lengths_P: np.ndarray,
                  num_new: int) -> list[list[list[str]]]:
    """Decoded continuations [Y][P][N], each cut at the first end-of-text token."""
    out = []
    for member in buffers_YPNL:
        rows = []
        for p, samples in enumerate(member):
            texts = []
            for seq in samples:
                new = [int(t) for t in seq[lengths_P[p] : lengths_P[p] + num_new]]
                if model.eot in new:
                    new = new[: new.index(model.eot)]
                texts.append(model.tok.decode(new))
            rows.append(texts)
        out.append(rows)
    return out


def steer(model: splice.SplicedModel, prompts, feature_ids, values_YK: np.ndarray, *,
          num_samples: int = 4, num_new: int = 40, temperature: float = 1.0, top_k: int = 0,
          seed: int = 0) -> dict:
    """Baseline and steered continuations: {"baseline": [P][N], "steered": [Y][P][N]}.

    values_YK are reported activations (one row per dose, one column per feature).
    """
    ids_K = splice.check_feature_ids(model, feature_ids)
    values_YK = np.asarray(values_YK, np.float32).reshape(-1, len(ids_K))
    tokens_PL, lengths_P = splice.tokenize_prompts(model, prompts, room=num_new)
    # Member 0 is the baseline (clamp switched off); members 1..Y are the doses.
    all_YK = np.concatenate([np.zeros_like(values_YK[:1]), values_YK])
    active_Y = np.arange(all_YK.shape[0]) > 0
    buffers = generate(
        model.lm_params, model.sae, tokens_PL, lengths_P,
        jnp.asarray(ids_K), jnp.asarray(all_YK), jnp.asarray(active_Y), jax.random.key(seed),
        jnp.float32(temperature), model_cfg=model.model_cfg, num_samples=num_samples,
        num_new=num_new,
        top_k=top_k, buffer_len=tokens_PL.shape[1] + num_new,
    )
    buffers_YPNL = np.asarray(buffers)
    texts = continuations(model, buffers_YPNL, lengths_P, num_new)
    return {"baseline": texts[0], "steered": texts[1:], "tokens": buffers_YPNL,
            "prompt_lengths": lengths_P}


@functools.partial(jax.jit, static_argnames="model_cfg")
def _token_nll(lm_params, tokens_BL, *, model_cfg):
    """Next-token loss [B, L - 1] of each buffer under the unsteered LM."""
    logits_BLV, _ = gpt_model.forward(model_cfg, lm_params, tokens_BL[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BLV, tokens_BL[:, 1:])


def continuation_nll(model: splice.SplicedModel, buffers_YPNL: np.ndarray, lengths_P: np.ndarray,
                     num_new: int) -> np.ndarray:
    """Mean loss [Y] (nats per token) of each member's continuations under the unsteered LM,
    over the generated tokens up to and including a first end-of-text token: exp of it is the
    fluency guard's perplexity (steered text the unsteered model finds unlikely scores high)."""
    y, p, n, length = buffers_YPNL.shape
    nll_BL = np.asarray(_token_nll(model.lm_params, jnp.asarray(buffers_YPNL.reshape(-1, length)),
                                   model_cfg=model.model_cfg)).reshape(y, p, n, length - 1)
    # nll[..., t - 1] scores the token at slot t; generated slots are [len_p, len_p + num_new).
    slot_L = np.arange(1, length)
    mask_YPNL = np.zeros((y, p, n, length - 1), bool)
    for i, start in enumerate(lengths_P.tolist()):
        mask_YPNL[:, i] = (slot_L >= start) & (slot_L < start + num_new)
    is_eot = (buffers_YPNL[..., 1:] == model.eot) & mask_YPNL
    after_eot = (np.cumsum(is_eot, axis=-1) - is_eot) > 0  # keep the first EOT, drop the rest
    mask_YPNL &= ~after_eot
    return (nll_BL * mask_YPNL).sum(axis=(1, 2, 3)) / np.maximum(mask_YPNL.sum(axis=(1, 2, 3)), 1)


def _side_by_side(prompts, values, result, unit: str) -> str:
    """Markdown: per prompt, the first sample of the baseline and of each dose."""
    lines = []
    for p, prompt in enumerate(prompts):
        lines.append(f"### {prompt!r}\n")
        lines.append(f"- **baseline**: {result['baseline'][p][0]}")
        for v, value in enumerate(values):
            lines.append(f"- **clamp {value:g}{unit}**: {result['steered'][v][p][0]}")
        lines.append("")
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """`monosem-steer`: writes W/steer/<name>.json and .md; returns the summary."""
    t_start = time.time()
    cfg = steer_config_from(config)
    model = splice.load(workdir, cfg.sae_name)
    ids_K = splice.check_feature_ids(model, cfg.features)
    splice.tokenize_prompts(model, cfg.prompts, room=cfg.num_new)  # bad prompts fail early
    values_Y = np.asarray(cfg.clamp_values, np.float32)
    max_K = max_activations(model, workdir, ids_K, cfg.max_tokens)
    if cfg.scale == "max":
        if np.any(max_K <= 0):
            dead = ids_K[max_K <= 0].tolist()
            raise ValueError(f"features {dead} never fire on eval tokens; use scale=absolute")
        values_YK = values_Y[:, None] * max_K[None]
    else:
        values_YK = np.broadcast_to(values_Y[:, None], (len(values_Y), len(ids_K)))
    logging.info("steer %s: features %s (max act %s), %d doses x %d prompts x %d samples",
                 model.sae.name, ids_K.tolist(), np.round(max_K, 3).tolist(), len(values_Y),
                 len(cfg.prompts), cfg.num_samples)
    result = steer(model, cfg.prompts, ids_K, values_YK, num_samples=cfg.num_samples,
                   num_new=cfg.num_new, temperature=cfg.temperature, top_k=cfg.top_k,
                   seed=cfg.seed)
    name = cfg.name or "steer_" + "_".join(map(str, ids_K.tolist()))
    out_dir = os.path.join(workdir, "steer")
    os.makedirs(out_dir, exist_ok=True)
    unit = "x max" if cfg.scale == "max" else ""
    markdown = _side_by_side(cfg.prompts, cfg.clamp_values, result, unit)
    print(markdown, flush=True)
    md_path = os.path.join(out_dir, f"{name}.md")
    with open(md_path + ".tmp", "w", encoding="utf-8") as f:
        f.write(markdown)
    os.replace(md_path + ".tmp", md_path)
    summary = {
        "sae_name": model.sae.name, "hook": model.hook, "features": ids_K.tolist(),
        "max_activation": max_K.tolist(), "scale": cfg.scale, "doses": list(cfg.clamp_values),
        "clamp_values": values_YK.tolist(), "prompts": list(cfg.prompts),
        "num_samples": cfg.num_samples, "num_new": cfg.num_new,
        "temperature": cfg.temperature, "top_k": cfg.top_k, "seed": cfg.seed,
        "baseline": result["baseline"], "steered": result["steered"],
        "markdown": md_path, "wall_s": time.time() - t_start,
    }
    return metrics_io.finish_summary(os.path.join(out_dir, f"{name}.json"), summary)
