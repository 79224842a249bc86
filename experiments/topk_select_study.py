"""Which TopK selection and which decode make the fastest full SAE train step?

Question: the topk step selects the k largest pre-activations per row (model.topk_select, an
exact lax.top_k) and decodes sparsely from them (model.decode_sparse: k gathered decoder rows,
as losses.loss_topk). Is any alternative faster, alone (forward + VJP on a partly trained SAE's
pre-activations) and inside the whole train step? Alternatives: lax.approx_max_k; an exact
group-maxima prefilter (top_k of the group maxima, then of their k·group candidates); a
threshold at the k-th value of top_k applied with where (no scatter); a 32-pass bisection for
the k-th value (alone only); each selection with the sparse decode and, as the step was before,
with the dense decode x̂ = f_BF @ W_dec. Default shape: B = F = 4096, d = 256, k = 32.

  python experiments/topk_select_study.py                   # known-dictionary rows, 3 rounds
  python experiments/topk_select_study.py --acts acts.npy --rounds 5 --steps 8
  python experiments/topk_select_study.py --smoke           # tiny sizes (a code check)

Each full-step contender is step.train_step jitted with its loss passed as `loss` (the
project's own loss_topk for the reference); every loss here is composed from library pieces
(model.preacts_pre_bias, model.topk_select, model.scatter_topk, model.decode_sparse,
model.decode, losses.auxk_term). dead_steps = 1000, so AuxK stays off and every contender
computes the same loss up to float summation order (the JSON reports the largest W_enc
difference from the reference after the timed steps). Rounds alternate the contenders' order;
wall and CPU ms per step are medians over rounds (CPU time: this process, steadier on a shared
machine). The activations: --acts, --store or generated (see _bench_common.add_acts_flags).

The last stdout line is one JSON object: `encode_only` (per alternative: exact, recall, fwd_ms,
fwd_vjp_ms, decode_vjp_ms medians), `full_step` (per contender: wall/CPU ms medians, speedup
over the project's step, W_enc difference, final loss), `rebuilt_loss_matches_project`.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile

import _bench_common as common
import jax
import jax.numpy as jnp
import numpy as np

from monosem_jax.sae import losses as sae_losses
from monosem_jax.sae import model
from monosem_jax.sae import step as sae_step

PROJECT = "project loss_topk (top_k, sparse decode)"
SMOKE = dict(rows=4096, acts_d=32, d_sae=512, batch=256, k=8, steps=2, rounds=1,
             pretrain_steps=2)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_step_study_flags(ap, SMOKE)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--pretrain-steps", type=int, default=20,
                    help="project steps before the pre-activations of the encode-only timing")
    return common.parse_with_smoke(ap, argv, SMOKE)


# ----------------------------------------------------------------------------- selections
# A selection maps (z_BF, k_max, k) to (ReLU'd values, indices) [B, k_max], descending, values
# past the traced k zeroed: the contract of model.topk_select.


def mask_beyond_k(vals_BK, k_max: int, k):
    return vals_BK if k is None else jnp.where((jnp.arange(k_max) < k)[None], vals_BK, 0.0)


def select_approx(z_BF, k_max: int, k=None):
    """lax.approx_max_k (recall_target 0.95, the default), ReLU."""
    vals_BK, idx_BK = jax.lax.approx_max_k(z_BF, k_max)
    return jax.nn.relu(mask_beyond_k(vals_BK, k_max, k)), idx_BK


def group_prefilter(z_BF, k_max: int, group: int):
    """Exact top-k via group maxima: the top k lie in the k groups with the largest maxima."""
    b, f = z_BF.shape
    zg = z_BF.reshape(b, f // group, group)
    _, gi_BK = jax.lax.top_k(jnp.max(zg, axis=2), k_max)
    cand = jnp.take_along_axis(zg, gi_BK[:, :, None], axis=1).reshape(b, k_max * group)
    vals_BK, ci_BK = jax.lax.top_k(cand, k_max)
    idx_BK = jnp.take_along_axis(gi_BK, ci_BK // group, axis=1) * group + ci_BK % group
    return vals_BK, idx_BK


def select_group(group: int):
    def select(z_BF, k_max: int, k=None):
        _, idx_BK = group_prefilter(jax.lax.stop_gradient(z_BF), k_max, group)
        vals_BK = jnp.take_along_axis(z_BF, idx_BK, axis=1)  # the differentiable gather
        return jax.nn.relu(mask_beyond_k(vals_BK, k_max, k)), idx_BK

    select.__doc__ = f"group maxima (groups of {group}) prefilter, then top_k of the candidates"
    return select


# ----------------------------------------------------------------------------- dense activations
# An activation maps (z_BF, k_max, k) to the dense [B, F] TopK code (model.topk_activation's
# contract).


def scattered(select):
    def activation(z_BF, k_max: int, k=None):
        return model.scatter_topk(z_BF, *select(z_BF, k_max, k))

    return activation


def kth_value(vals_BK, k_max: int, k):
    # A reduction (not a slice) of top_k's values: XLA:CPU rewrites sort+slice into its TopK
    # call only while the slice is the whole top-k block; slicing one column of it falls back
    # to a full sort of each row (~20x slower).
    if k is None:
        return jnp.min(vals_BK, axis=1, keepdims=True)
    return jnp.min(jnp.where((jnp.arange(k_max) < k)[None], vals_BK, jnp.inf), axis=1,
                   keepdims=True)


def activation_threshold(z_BF, k_max: int, k=None):
    """k-th value from lax.top_k, then an elementwise mask (gradient: the mask only)."""
    t_B1 = kth_value(jax.lax.top_k(jax.lax.stop_gradient(z_BF), k_max)[0], k_max, k)
    return jnp.where(z_BF >= t_B1, jax.nn.relu(z_BF), 0.0)


def activation_bisect(z_BF, k_max: int, k=None):
    """k-th value by 32 bisection passes (compare + count) on order-preserving uint32 keys."""
    kk = k_max if k is None else k
    bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(z_BF), jnp.uint32)
    key = jnp.where((bits >> 31) == 1, ~bits, bits | jnp.uint32(1 << 31))
    lo = jnp.min(key, axis=1, keepdims=True)
    hi = jnp.max(key, axis=1, keepdims=True)

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo + 1) // 2
        ok = jnp.sum((key >= mid).astype(jnp.int32), axis=1, keepdims=True) >= kk
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    t, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
    return jnp.where(key >= t, jax.nn.relu(z_BF), 0.0)


SELECTIONS = {
    "top_k": model.topk_select,
    "approx_max_k": select_approx,
    "group16 prefilter": select_group(16),
    "group32 prefilter": select_group(32),
}
ACTIVATIONS = {
    "top_k+scatter": model.topk_activation,
    "approx_max_k+scatter": scattered(select_approx),
    "group16 prefilter+scatter": scattered(select_group(16)),
    "group32 prefilter+scatter": scattered(select_group(32)),
    "threshold(top_k kth)+where": activation_threshold,
    "bisect32 threshold+where": activation_bisect,
}
NOT_IN_STEP = ("bisect32 threshold+where",)  # 5x slower than top_k alone


# ----------------------------------------------------------------------------- losses


def topk_loss_terms(params, x_BD, z_BF, xhat_BD, f_BF, hp, dead_F, cfg):
    """losses.loss_topk's value and aux from its reconstruction: mse + aux_coef · AuxK."""
    mse = jnp.mean(jnp.sum(jnp.square(x_BD - xhat_BD), axis=1))
    auxk = sae_losses.auxk_term(params, sae_losses.auxk_z_fn(cfg, x_BD, z_BF), x_BD, xhat_BD,
                                dead_F, cfg.k_aux)
    return mse + hp["aux_coef"] * auxk, {"f_BF": f_BF, "xhat_BD": xhat_BD, "mse": mse,
                                          "auxk": auxk}


def sparse_decode_loss(select):
    """losses.loss_topk with `select` in place of model.topk_select."""

    def loss(params, x_BD, hp, dead_F, cfg):
        x_BD = x_BD.astype(jnp.float32)
        z_BF = model.preacts_pre_bias(params, x_BD)
        vals_BK, idx_BK = select(z_BF, cfg.k, hp["k"])
        xhat_BD = model.decode_sparse(params, vals_BK, idx_BK)
        f_BF = jax.lax.stop_gradient(model.scatter_topk(z_BF, vals_BK, idx_BK))
        return topk_loss_terms(params, x_BD, z_BF, xhat_BD, f_BF, hp, dead_F, cfg)

    return loss


def dense_decode_loss(activation):
    """loss_topk as it was before the sparse decode: x̂ = f_BF @ W_dec, f = activation(z)."""

    def loss(params, x_BD, hp, dead_F, cfg):
        x_BD = x_BD.astype(jnp.float32)
        z_BF = model.preacts_pre_bias(params, x_BD)
        f_BF = activation(z_BF, cfg.k, hp["k"])
        xhat_BD = model.decode(params, f_BF)
        return topk_loss_terms(params, x_BD, z_BF, xhat_BD, f_BF, hp, dead_F, cfg)

    return loss


def step_losses() -> dict:
    """Full-step contender name -> loss (None: the variant's own, losses.loss_topk)."""
    out = {PROJECT: None}
    out.update({f"sparse decode: {n}": sparse_decode_loss(s)
                for n, s in SELECTIONS.items() if n != "top_k"})
    out.update({f"dense decode: {n}": dense_decode_loss(a)
                for n, a in ACTIVATIONS.items() if n not in NOT_IN_STEP})
    return out


# ----------------------------------------------------------------------------- set-up


def sae_setup(a, d: int):
    cfg = model.SAEConfig(variant="topk", d=d, d_sae=a.d_sae, k=a.k, k_aux=min(256, a.d_sae),
                          dead_steps=1000)
    hp = sae_step.default_hparams(cfg, lr=a.lr, total_steps=1000, lr_decay_frac=0.0)
    return cfg, hp


def batches(arr: np.ndarray, batch: int, start: int, count: int) -> list:
    return [jnp.asarray(arr[(start + i) * batch:(start + i + 1) * batch]) for i in range(count)]


def compile_step(cfg, hp, x_BD, loss=None):
    state = sae_step.init_state(cfg, jax.random.key(0))
    step = jax.jit(functools.partial(sae_step.train_step, cfg=cfg, loss=loss), donate_argnums=0)
    return step.lower(state, x_BD, hp).compile()


def pretrained_params(a, cfg, hp, xs: list):
    """A partly trained SAE (the project's step on xs): realistic pre-activations."""
    step = compile_step(cfg, hp, xs[0])
    state = sae_step.init_state(cfg, jax.random.key(a.seed))
    for x_BD in xs:
        state, _ = step(state, x_BD, hp)
    return state["params"]


def rebuilt_matches_project(params, x_BD, hp, cfg) -> bool:
    """The rebuilt sparse loss with model.topk_select equals losses.loss_topk."""
    dead_F = jnp.zeros((cfg.d_sae,), bool)
    ours = sparse_decode_loss(model.topk_select)(params, x_BD, hp, dead_F, cfg)[0]
    project = sae_losses.loss_topk(params, x_BD, hp, dead_F, cfg)[0]
    return bool(jnp.allclose(ours, project, rtol=1e-6, atol=0.0))


# ----------------------------------------------------------------------------- encode only


def accuracy(dense_BF: np.ndarray, ref_BF: np.ndarray) -> dict:
    nz_B = (dense_BF != 0).sum(1)
    hits = ((dense_BF != 0) & (ref_BF != 0)).sum()
    return {"exact": bool(np.array_equal(dense_BF, ref_BF)),
            "recall": float(hits / max((ref_BF != 0).sum(), 1)),
            "nnz_per_row_min": int(nz_B.min()), "nnz_per_row_max": int(nz_B.max())}


def dense_probes(activation, k: int) -> dict:
    """probe name -> (jitted fn, argument names) for one dense activation."""
    act = lambda z: activation(z, k)  # noqa: E731
    return {
        "fwd_ms": (jax.jit(act), ("z",)),
        "fwd_vjp_ms": (jax.jit(lambda z, g: jax.vjp(act, z)[1](g)[0]), ("z", "g")),
        # encode + dense decode + VJP wrt (z, W_dec): what the dense-decode loss does
        "decode_vjp_ms": (jax.jit(lambda z, w: jax.grad(
            lambda q, w: jnp.sum(jnp.square(act(q) @ w)), argnums=(0, 1))(z, w)), ("z", "w")),
    }


def sparse_probes(select, k: int) -> dict:
    """probe name -> (jitted fn, argument names) for one selection with the sparse decode."""

    def decoded(q, w):
        vals_BK, idx_BK = select(q, k)
        return jnp.sum(jnp.square(jnp.einsum("bk,bkd->bd", vals_BK, w[idx_BK])))

    return {"fwd_ms": (jax.jit(lambda z: select(z, k)), ("z",)),
            "decode_vjp_ms": (jax.jit(jax.grad(decoded, argnums=(0, 1))), ("z", "w"))}


def encode_only(a, params, x_BD) -> dict:
    """Each alternative alone on real pre-activations: accuracy and probe times (medians)."""
    z_BF = jax.jit(model.preacts_pre_bias)(params, x_BD)
    inputs = {"z": z_BF, "w": params["w_dec_FD"],
              "g": jnp.asarray(np.random.default_rng(1).standard_normal(z_BF.shape, np.float32))}
    ref = np.asarray(jax.jit(lambda z: model.topk_activation(z, a.k))(z_BF))
    records, probes = {}, {}
    for name, act in ACTIVATIONS.items():
        records[f"dense: {name}"] = accuracy(np.asarray(jax.jit(
            lambda z, act=act: act(z, a.k))(z_BF)), ref)
        probes[f"dense: {name}"] = dense_probes(act, a.k)
    for name, select in SELECTIONS.items():
        records[f"sparse: {name}"] = accuracy(np.asarray(jax.jit(
            lambda z, s=select: model.scatter_topk(z, *s(z, a.k)))(z_BF)), ref)
        probes[f"sparse: {name}"] = sparse_probes(select, a.k)
    times = {n: {p: [] for p in probes[n]} for n in probes}
    for _ in range(a.rounds):
        for name, named in probes.items():
            for probe, (fn, arg_names) in named.items():
                args = [inputs[n] for n in arg_names]
                times[name][probe].append(1e3 * common.timed(fn, *args, reps=1)[0])
    for name, rec in records.items():
        rec.update({p: {"median": common.median(v), "all": [round(t, 1) for t in v]}
                    for p, v in times[name].items()})
    common.log(json.dumps(records, indent=1))
    return records


# ----------------------------------------------------------------------------- full step


def full_step(a, cfg, hp, xs: list) -> dict:
    """Every contender inside the whole train step, compiled once, rounds alternating."""
    contenders = {
        name: common.Contender(lambda: sae_step.init_state(cfg, jax.random.key(a.seed)),
                               compile_step(cfg, hp, xs[0], loss))
        for name, loss in step_losses().items()}
    timings, finals = common.time_steps(contenders, xs, hp, a.rounds)
    w_enc = {n: np.asarray(st["params"]["w_enc_DF"]) for n, (st, _) in finals.items()}
    base = timings[PROJECT]
    out = {}
    for name, t in timings.items():
        rec = common.timing_summary(t)
        rec.update(
            speedup_vs_project_wall=common.median(base["wall_ms"]) / rec["wall_ms_median"],
            speedup_vs_project_cpu=common.median(base["cpu_ms"]) / rec["cpu_ms_median"],
            max_abs_diff_w_enc_vs_project=float(np.abs(w_enc[name] - w_enc[PROJECT]).max()),
            final_loss=float(finals[name][1]["loss"]))
        out[name] = rec
    return out


def main(argv=None) -> dict:
    a = parse_args(argv)
    cpus = common.setup_process(a)
    with tempfile.TemporaryDirectory(prefix="topk_study_") as tmp:
        path, acts_info = common.acts_file(a, tmp)
        arr = common.load_acts(path)
    if arr.shape[0] < (a.steps + 1 + a.pretrain_steps) * a.batch:
        raise SystemExit(f"{arr.shape[0]} rows: need (--steps + 1 + --pretrain-steps) x --batch")
    cfg, hp = sae_setup(a, arr.shape[1])
    xs = batches(arr, a.batch, 0, a.steps + 1)
    params = pretrained_params(a, cfg, hp, batches(arr, a.batch, a.steps + 1, a.pretrain_steps))
    res = {"study": "topk_select_and_decode", "backend": jax.default_backend(),
           "shape": {"B": a.batch, "F": a.d_sae, "d": cfg.d, "k": a.k}, "cpus": cpus,
           "acts": acts_info, "steps_per_round": a.steps, "rounds": a.rounds, "smoke": a.smoke,
           "rebuilt_loss_matches_project": rebuilt_matches_project(params, xs[0], hp, cfg),
           "encode_only": encode_only(a, params, xs[0]),
           "full_step": full_step(a, cfg, hp, xs)}
    print(json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
