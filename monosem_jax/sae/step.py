"""SAE optimisation: hyper-parameters and schedules, the pure train step, dead-latent resampling.

Hyper-parameters are traced float32/int32 scalars (so a sweep stacks them on a leading axis and
vmaps one compiled step); everything structural lives in the static `SAEConfig`. The learning
rate is applied in `train_step` as −lr_t · adam_update, so it is traced like the rest.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from monosem_jax.sae import metrics as sae_metrics
from monosem_jax.sae import model, sparse
from monosem_jax.sae.losses import LOSSES, VARIANT_HPARAMS
from monosem_jax.sae.model import HParams, Params, SAEConfig

State = dict

# The hyper-parameter registry: every traced hyper-parameter with its dtype and base default
# (None: the SAE's static k). Config fields of the same names set them (total_steps comes from
# config.steps); each variant's own defaults are losses.VARIANT_HPARAMS.
HPARAMS = {
    "lr": (jnp.float32, 5e-5),
    "l1_coef": (jnp.float32, 0.0),
    "aux_coef": (jnp.float32, 1.0 / 32.0),
    "jl_coef": (jnp.float32, 0.0),
    "l0_coef": (jnp.float32, 0.0),
    "k": (jnp.int32, None),
    "k_start": (jnp.int32, None),
    "total_steps": (jnp.float32, 10_000),
    "l1_warmup_frac": (jnp.float32, 0.05),
    "lr_decay_frac": (jnp.float32, 0.2),
    "k_anneal_frac": (jnp.float32, 0.0),
    "jl_warmup_frac": (jnp.float32, 0.4),
    # batchtopk variants: weight of each batch's smallest kept activation in θ's running
    # average (SAELens topk_threshold_lr 0.01: a window of ~100 steps, short enough for our
    # 600-step runs; dictionary_learning's β = 0.999 suits its 30k+ steps).
    "threshold_rate": (jnp.float32, 0.01),
}
HPARAM_KEYS = tuple(HPARAMS)
INT_HPARAMS = tuple(name for name, (dtype, _) in HPARAMS.items() if dtype == jnp.int32)
CONFIG_HPARAMS = tuple(name for name in HPARAM_KEYS if name != "total_steps")
_FRACTIONS = ("l1_warmup_frac", "lr_decay_frac", "k_anneal_frac", "jl_warmup_frac")
_COEFFICIENTS = ("l1_coef", "aux_coef", "jl_coef", "l0_coef")
# axu930/gpt_sae train_sae.py get_jl_coeff: 0.5 + 2 cos(π t / (2 w)) for t < w, then 0.5, i.e. the
# coefficient starts at 5× its final value and eases down (a "warm-up" that spreads directions
# early); we keep that shape: jl_coef · (1 + JL_BOOST · cos(π t / (2 w))).
JL_BOOST = 4.0


def default_hparams(cfg: SAEConfig, **overrides) -> HParams:
    """The registry's defaults, then the variant's, then `overrides`, as typed scalars."""
    unknown = sorted(set(overrides) - set(HPARAM_KEYS))
    if unknown:
        raise ValueError(f"unknown SAE hyper-parameter(s) {unknown}; valid: {HPARAM_KEYS}")
    hp = {name: cfg.k if default is None else default for name, (_, default) in HPARAMS.items()}
    hp.update(VARIANT_HPARAMS[cfg.variant](cfg))
    hp.update(overrides)
    return {name: jnp.asarray(hp[name], dtype) for name, (dtype, _) in HPARAMS.items()}


def validate_hparams(cfg: SAEConfig, hp: HParams) -> None:
    """Raises ValueError naming the first bad hyper-parameter (works on stacked sweeps too)."""
    missing = [name for name in HPARAM_KEYS if name not in hp]
    if missing:
        raise ValueError(f"missing SAE hyper-parameter(s) {missing}; expected {HPARAM_KEYS}")
    values = {name: np.asarray(jax.device_get(hp[name])) for name in HPARAM_KEYS}

    def check(name: str, ok, valid: str) -> None:
        v = values[name]
        if not (np.all(np.isfinite(v)) and np.all(ok(v))):
            raise ValueError(f"hyper-parameter {name}={v.tolist()} is invalid; valid: {valid}")

    check("lr", lambda v: v > 0, "> 0")
    for name in _COEFFICIENTS:
        check(name, lambda v: v >= 0, ">= 0")
    check("total_steps", lambda v: v >= 1, ">= 1")
    check("threshold_rate", lambda v: (v >= 0) & (v <= 1), "in [0, 1]")
    for name in _FRACTIONS:
        check(name, lambda v: (v >= 0) & (v <= 1), "in [0, 1]")
    if cfg.variant in model.TOPK_FAMILY:  # top_k is compiled for cfg.k; a traced k selects fewer
        for name in INT_HPARAMS:
            check(name, lambda v: (v >= 1) & (v <= cfg.k), f"an integer in [1, cfg.k={cfg.k}]")


def _ramp(t: jax.Array, width: jax.Array) -> jax.Array:
    """min(1, t / width), or 1 when width is 0."""
    return jnp.where(width > 0, jnp.clip(t / jnp.where(width > 0, width, 1.0), 0.0, 1.0), 1.0)


def scheduled(hp: HParams, step) -> HParams:
    """Effective hyper-parameters at `step` (traced or Python int)."""
    t = jnp.asarray(step).astype(jnp.float32)
    total = hp["total_steps"]
    out = dict(hp)
    # Anthropic 2024: λ rises linearly from 0 over the first 5% of steps. The same sparsity
    # warm-up applies to JumpReLU's L0 coefficient (Gemma Scope / SAELens l0_warm_up_steps).
    warm = _ramp(t, hp["l1_warmup_frac"] * total)
    out["l1_coef"] = hp["l1_coef"] * warm
    out["l0_coef"] = hp["l0_coef"] * warm
    # Anthropic 2024: the learning rate decays linearly to 0 over the last 20% of steps.
    out["lr"] = hp["lr"] * _ramp(total - t, hp["lr_decay_frac"] * total)
    # Optional TopK / BatchTopK schedule: k moves linearly from k_start to k over the first
    # k_anneal_frac.
    frac = _ramp(t, hp["k_anneal_frac"] * total)
    k_start = hp["k_start"].astype(jnp.float32)
    out["k"] = jnp.round(k_start + (hp["k"].astype(jnp.float32) - k_start) * frac).astype(
        jnp.int32)
    jl_w = hp["jl_warmup_frac"] * total
    boost = 1.0 + JL_BOOST * jnp.cos(0.5 * jnp.pi * _ramp(t, jl_w))
    out["jl_coef"] = hp["jl_coef"] * jnp.where(jl_w > 0, boost, 1.0)
    return out


def make_optimizer() -> optax.GradientTransformation:
    """Clip the global gradient norm to 1, then Adam(0.9, 0.999, eps 1e-8); lr applied outside."""
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8))


def init_state(cfg: SAEConfig, key: jax.Array) -> State:
    """Fresh params, optimizer state, step 0 and per-feature steps-since-fired counters."""
    params = model.init_params(cfg, key)
    return {
        "params": params,
        "opt_state": make_optimizer().init(params),
        "step": jnp.zeros((), jnp.int32),
        "steps_since_fired_F": jnp.zeros((cfg.d_sae,), jnp.int32),
    }


def update_threshold(theta: jax.Array, min_kept: jax.Array, rate: jax.Array) -> jax.Array:
    """θ ← (1 − rate)·θ + rate·min_kept; the first sample sets θ; a batch with none leaves it."""
    # The batchtopk inference threshold: a running average of the smallest activation the batch
    # rule kept (SAELens BatchTopKTrainingSAE.update_topk_threshold, an EMA from 0; dictionary_
    # learning's matryoshka trainer starts its EMA at the first sample, as here, so θ carries no
    # bias towards its 0 init). θ = 0 means "no sample yet"; min_kept = 0 means nothing fired.
    ema = jnp.where(theta > 0, (1.0 - rate) * theta + rate * min_kept, min_kept)
    return jnp.where(min_kept > 0, ema, theta).astype(jnp.float32)


def project_out_parallel(w_dec_FD: jax.Array, g_FD: jax.Array) -> jax.Array:
    """Removes from each gradient row its component along that decoder row."""
    u_FD = model.unit_rows(w_dec_FD)
    return g_FD - jnp.sum(g_FD * u_FD, axis=1)[:, None] * u_FD


def loss_and_grads(params: Params, x_BD: jax.Array, hp_t: HParams, dead_F: jax.Array,
                   cfg: SAEConfig, member_axis: str | None = None):
    """((loss, aux), grads) of the cfg.variant loss: sparse where cfg allows (sae/sparse.py).

    The pre-activations are computed once, without gradient (in cfg.matmul_dtype), and every loss
    reads them (the dense losses through encoder_grad.attach_dense); for the
    variants with a variable number of active latents a batch takes the sparse loss at the
    smallest capacity its busiest row fits, else the dense one (a lax.switch: only the branch
    taken runs). Inside a vmap over sweep members named `member_axis`, all members take the same
    branch (a batched index would make the switch run them all).
    """
    def value_and_grad(loss_fn, stats=None, **kwargs):
        fn = functools.partial(with_code_stats(loss_fn, x_BD.shape[0], cfg.d_sae, stats),
                               cfg=cfg, **kwargs)
        return lambda: jax.value_and_grad(fn, has_aux=True)(params, x_BD, hp_t, dead_F)

    pre_BF = jax.lax.stop_gradient(model.variant_preacts(cfg, params, x_BD))
    variable = cfg.variant in sparse.VARIABLE_ACTIVE
    active_B = sparse.active_counts(cfg, params, pre_BF) if variable else None
    # The ReLU variants' dense activations are ReLU(pre): their L0, L1 and fired latents come
    # from one pass over pre (which the capacity ladder makes anyway), not from the loss's f.
    # (Called inside the dense branch, so a sparse branch pays for none of it.)
    relu_stats = (functools.partial(sae_metrics.relu_code_stats, pre_BF, active_B)
                  if cfg.variant in sparse.RELU_VARIANTS else None)
    dense_vg = value_and_grad(LOSSES[cfg.variant], stats=relu_stats, pre_BF=pre_BF)
    if not sparse.uses_sparse_step(cfg):
        return dense_vg()
    sparse_loss = sparse.SPARSE_LOSSES[cfg.variant]
    if not variable:
        return value_and_grad(sparse_loss, pre_BF=pre_BF)()
    rung = sparse.rung(cfg, active_B)
    if member_axis is not None:
        rung = jax.lax.pmax(rung, member_axis)
    branches = [value_and_grad(sparse_loss, pre_BF=pre_BF, num_c=c)
                for c in sparse.capacities(cfg)]
    return jax.lax.switch(rung, branches + [dense_vg])


def with_code_stats(loss_fn, num_b: int, num_f: int, stats=None):
    """loss_fn whose aux carries the statistics of its activations ("code_stats": L0, L1 and
    the fired latents [F]) instead of the activations themselves: dense f_BF from the dense
    losses, a sparse "code" (values, latents) from sae/sparse.py's, so the step never builds a
    [B, F] array it does not need, and both branches of the sparse step's switch agree. `stats`,
    when given, computes the dense f's statistics another way (f is then not read)."""
    def wrapped(*args, **kwargs):
        loss, aux = loss_fn(*args, **kwargs)
        aux = dict(aux)
        if stats is not None:
            aux.pop("f_BF")
            stats_now = stats()
        elif "f_BF" in aux:
            stats_now = sae_metrics.dense_code_stats(aux.pop("f_BF"))
        else:
            stats_now = sae_metrics.sparse_code_stats(*aux.pop("code"), num_b, num_f)
        if "l1" in aux:  # the loss reports its own "l1" (its penalty), which the metrics keep:
            stats_now = {k: v for k, v in stats_now.items() if k != "l1"}  # skip f's L1 pass
        return loss, {**aux, "code_stats": jax.lax.stop_gradient(stats_now)}
    return wrapped


def train_step(state: State, x_BD: jax.Array, hp: HParams, *, cfg: SAEConfig, loss=None,
               member_axis: str | None = None) -> tuple[State, dict[str, jax.Array]]:
    """One optimiser step of the cfg.variant loss; pure (jit with cfg static, donate state).

    `loss` replaces the variant's loss function (same signature as `losses.LOSSES` entries,
    always dense); experiments pass alternative formulations through it. `member_axis`: the
    vmap axis name when the step runs vmapped over sweep members.
    """
    params = state["params"]
    hp_t = scheduled(hp, state["step"])
    dead_F = state["steps_since_fired_F"] >= cfg.dead_steps
    if loss is not None:
        loss_fn = functools.partial(with_code_stats(loss, x_BD.shape[0], cfg.d_sae), cfg=cfg)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x_BD, hp_t,
                                                                        dead_F)
    else:
        (loss, aux), grads = loss_and_grads(params, x_BD, hp_t, dead_F, cfg, member_axis)
    unit_norm = cfg.variant in model.UNIT_NORM_DECODER
    if unit_norm:  # only the tangential part may move a row constrained to the unit sphere
        grads = {**grads, "w_dec_FD": project_out_parallel(params["w_dec_FD"], grads["w_dec_FD"])}
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = make_optimizer().update(grads, state["opt_state"], params)
    new_params = jax.tree.map(lambda p, u: p - hp_t["lr"] * u, params, updates)
    if unit_norm:
        new_params["w_dec_FD"] = model.unit_rows(new_params["w_dec_FD"])
    if cfg.variant in model.BATCH_TOPK:  # θ is no gradient parameter (its gradient is 0 anyway)
        new_params["threshold"] = update_threshold(params["threshold"], aux["min_kept"],
                                                   hp_t["threshold_rate"])

    stats = aux.pop("code_stats")
    fired_F = stats.pop("fired_F")
    since_F = jnp.where(fired_F, 0, state["steps_since_fired_F"] + 1)
    new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1,
                 "steps_since_fired_F": since_F}

    metrics = {**sae_metrics.reconstruction_metrics(x_BD, aux["xhat_BD"]), **stats}
    # The variant's penalty terms; "l1" is then the penalty (the L1 of f·‖W_dec‖) where it has one.
    metrics.update({k: v for k, v in aux.items() if k != "xhat_BD"})
    metrics.update(loss=loss, lr=hp_t["lr"], l1_coef=hp_t["l1_coef"], grad_norm=grad_norm,
                   dead_fraction=jnp.mean((since_F >= cfg.dead_steps).astype(jnp.float32)))
    if cfg.variant in model.TOPK_FAMILY:
        metrics["k"] = hp_t["k"]
        if cfg.variant in model.BATCH_TOPK:
            metrics["threshold"] = new_params["threshold"]
    elif cfg.variant == "jl":
        metrics["jl_coef"] = hp_t["jl_coef"]
    elif cfg.variant == "jumprelu":
        metrics["l0_coef"] = hp_t["l0_coef"]
    return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def _zero_feature_rows(tree: Params, dead_F: jax.Array) -> Params:
    """Zeros the entries of encoder column, encoder bias and decoder row of each dead feature."""
    out = dict(tree)
    out["w_enc_DF"] = jnp.where(dead_F[None], 0.0, tree["w_enc_DF"])
    out["b_enc_F"] = jnp.where(dead_F, 0.0, tree["b_enc_F"])
    out["w_dec_FD"] = jnp.where(dead_F[:, None], 0.0, tree["w_dec_FD"])
    return out


def _reset_adam_moments(opt_state, dead_F: jax.Array):
    """Adam's mu and nu set to 0 for every modified weight and bias entry."""
    return tuple(
        s._replace(mu=_zero_feature_rows(s.mu, dead_F), nu=_zero_feature_rows(s.nu, dead_F))
        if isinstance(s, optax.ScaleByAdamState) else s
        for s in opt_state
    )


def resample_dead(state: State, x_ND: jax.Array, key: jax.Array, hp: HParams | None = None,
                  *, cfg: SAEConfig) -> State:
    """Towards Monosemanticity's neuron resampling of the dead features, on candidates x_ND."""
    # The paper's recipe: sample inputs with probability ∝ (the SAE's loss on them)²; each dead
    # feature's dictionary vector becomes its sampled input at unit norm (the raw input, no
    # b_dec subtracted), its encoder vector that input scaled to 0.2 × the mean encoder norm of
    # the alive features, its encoder bias 0; Adam's state for those entries is reset.
    params = state["params"]
    dead_F = state["steps_since_fired_F"] >= cfg.dead_steps
    x_ND = x_ND.astype(jnp.float32)
    xhat_ND = model.decode(params, model.encode(cfg, params, x_ND, hp))
    sq_err_N = jnp.sum(jnp.square(x_ND - xhat_ND), axis=1)  # the per-input loss (reconstruction)
    # Distinct samples ∝ sq_err² without replacement (Gumbel-top-m); the r-th dead feature takes
    # the r-th sample, wrapping around if more features are dead than there are candidates.
    num_n, num_f = x_ND.shape[0], cfg.d_sae
    num_m = min(num_f, num_n)
    logits_N = 2.0 * jnp.log(jnp.maximum(sq_err_N, 1e-30))
    _, pick_K = jax.lax.top_k(logits_N + jax.random.gumbel(key, (num_n,), jnp.float32), num_m)
    rank_F = jnp.cumsum(dead_F.astype(jnp.int32)) - 1
    x_FD = x_ND[pick_K[jnp.maximum(rank_F, 0) % num_m]]
    dir_FD = model.unit_rows(x_FD, eps=1e-30)

    enc_norm_F = model.row_norms(params["w_enc_DF"].T)
    alive_F = ~dead_F
    num_alive = jnp.sum(alive_F)
    alive_norm = jnp.where(  # all dead: fall back to the mean over all features
        num_alive > 0,
        jnp.sum(jnp.where(alive_F, enc_norm_F, 0.0)) / jnp.maximum(num_alive, 1),
        jnp.mean(enc_norm_F),
    )
    new_params = dict(params)
    new_params["w_dec_FD"] = jnp.where(dead_F[:, None], dir_FD, params["w_dec_FD"])
    new_params["w_enc_DF"] = jnp.where(dead_F[None], (0.2 * alive_norm * dir_FD).T,
                                       params["w_enc_DF"])
    new_params["b_enc_F"] = jnp.where(dead_F, 0.0, params["b_enc_F"])
    return {
        **state,
        "params": new_params,
        "opt_state": _reset_adam_moments(state["opt_state"], dead_F),
        "steps_since_fired_F": jnp.where(dead_F, 0, state["steps_since_fired_F"]),
    }
