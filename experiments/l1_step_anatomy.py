"""Where does the anthropic_2024 train step's time go? The step timed with parts removed.

Question: the anthropic_2024 (L1) step needs five [B,d]x[d,F]-sized GEMMs (10·B·d·F FLOPs);
how close is the whole step to those GEMMs alone, and what do the parts around them cost: the
batch metrics (sae_metrics.batch_metrics: the [B,F] L0/L1 reductions, EV, nmse), the gradient-norm
clip (make_optimizer's clip_by_global_norm and the grad_norm metric, one reduction over every
gradient) and the fired-latent tracking (any(f > 0) over [B,F], steps since fired)? Default
shape: B = F = 4096, d = 256 (the SAELens comparison's).

  python experiments/l1_step_anatomy.py                     # known-dictionary rows, 3 rounds
  python experiments/l1_step_anatomy.py --acts acts.npy --rounds 5 --steps 8
  python experiments/l1_step_anatomy.py --smoke             # tiny sizes (a code check)

Contenders: the library's step.train_step as it is; the same step rebuilt here from library
pieces (step.scheduled, losses.loss_anthropic_2024, step.make_optimizer, sae_metrics.batch_metrics)
with every part, which must match it (`rebuilt_matches_library`); and the rebuilt step without
each part, and without all three. Each is jitted with the state donated; rounds alternate the
order and start from a fresh state; wall and CPU ms per step are medians over rounds. Before
each round the float32 matmul rates are measured in this process (a 4096³ matmul and the step's
five GEMM shapes): fraction_of_peak = 10·B·d·F / step time / the best rate, and the GEMM bound
is the five GEMMs' time at the rates just measured. The activations: --acts, --store or
generated (see _bench_common.add_acts_flags).

The last stdout line is one JSON object: per contender wall/CPU ms medians, fraction_of_peak
(wall and CPU time), the GEMM bound, rebuilt_matches_library and the matmul rates per round.
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
import optax

from monosem_jax.sae import losses as sae_losses
from monosem_jax.sae import metrics as sae_metrics
from monosem_jax.sae import model
from monosem_jax.sae import step as sae_step

PARTS = ("batch_metrics", "grad_clip", "fired_tracking")
LIBRARY = "library step.train_step"
SMOKE = dict(rows=4096, acts_d=32, d_sae=512, batch=256, steps=2, rounds=1, peak_reps=1,
             square=256)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_step_study_flags(ap, SMOKE)
    ap.add_argument("--l1", type=float, default=3.0, help="L1 coefficient")
    ap.add_argument("--peak-reps", type=int, default=3, help="timed reps per matmul rate")
    ap.add_argument("--square", type=int, default=4096, help="size of the square peak matmul")
    return common.parse_with_smoke(ap, argv, SMOKE)


# ----------------------------------------------------------------------------- the step by parts


def optimizer(clip: bool) -> optax.GradientTransformation:
    """step.make_optimizer, or its Adam alone (the same Adam without the norm clip)."""
    return sae_step.make_optimizer() if clip else optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)


def init_state(cfg, seed: int, without: frozenset):
    state = sae_step.init_state(cfg, jax.random.key(seed))
    return {**state, "opt_state": optimizer("grad_clip" not in without).init(state["params"])}


def steps_since_fired(state, f_BF, without: frozenset):
    if "fired_tracking" in without:
        return state["steps_since_fired_F"]
    return jnp.where(jnp.any(f_BF > 0, axis=0), 0, state["steps_since_fired_F"] + 1)


def step_metrics(x_BD, loss, aux, grads, hp_t, since_F, cfg, without: frozenset) -> dict:
    """step.train_step's metrics for anthropic_2024, less those of the removed parts."""
    metrics = {}
    if "batch_metrics" not in without:
        metrics.update(sae_metrics.batch_metrics(x_BD, aux["xhat_BD"], aux["f_BF"]))
    metrics.update(mse=aux["mse"], l1=aux["l1"], loss=loss, lr=hp_t["lr"],
                   l1_coef=hp_t["l1_coef"])
    if "grad_clip" not in without:
        metrics["grad_norm"] = optax.tree.norm(grads)
    if "fired_tracking" not in without:
        metrics["dead_fraction"] = jnp.mean((since_F >= cfg.dead_steps).astype(jnp.float32))
    return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def anatomy_step(state, x_BD, hp, *, cfg, without: frozenset):
    """The anthropic_2024 train step (no unit-norm decoder, no threshold) less `without`."""
    params = state["params"]
    hp_t = sae_step.scheduled(hp, state["step"])
    dead_F = state["steps_since_fired_F"] >= cfg.dead_steps
    loss_fn = functools.partial(sae_losses.loss_anthropic_2024, cfg=cfg)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x_BD, hp_t, dead_F)
    opt = optimizer("grad_clip" not in without)
    updates, opt_state = opt.update(grads, state["opt_state"], params)
    new_params = jax.tree.map(lambda p, u: p - hp_t["lr"] * u, params, updates)
    since_F = steps_since_fired(state, aux["f_BF"], without)
    new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1,
                 "steps_since_fired_F": since_F}
    return new_state, step_metrics(x_BD, loss, aux, grads, hp_t, since_F, cfg, without)


def variants() -> dict:
    """Contender name -> the parts it leaves out (None: the library's own step)."""
    out = {LIBRARY: None, "rebuilt, every part": frozenset()}
    out.update({f"without {p}": frozenset({p}) for p in PARTS})
    out["without all three"] = frozenset(PARTS)
    return out


def contender(cfg, hp, x_BD, seed: int, without: frozenset | None) -> common.Contender:
    if without is None:
        fn, init = sae_step.train_step, lambda: sae_step.init_state(cfg, jax.random.key(seed))
    else:
        fn = functools.partial(anatomy_step, without=without)
        init = functools.partial(init_state, cfg, seed, without)
    step = jax.jit(functools.partial(fn, cfg=cfg), donate_argnums=0)
    return common.Contender(init, step.lower(init(), x_BD, hp).compile())


# ----------------------------------------------------------------------------- study


def rebuilt_matches_library(finals: dict) -> bool:
    lib = finals[LIBRARY][0]["params"]
    rebuilt = finals["rebuilt, every part"][0]["params"]
    return all(bool(np.allclose(lib[k], rebuilt[k], rtol=1e-5, atol=1e-7)) for k in lib)


def contender_summary(t: dict, peaks: list[dict], flops: float) -> dict:
    frac = [flops / (w / 1e3) / 1e9 / p["peak_gflops"]
            for w, p in zip(t["wall_ms"], peaks, strict=True)]
    frac_cpu = [flops / (c / 1e3) / 1e9 / p["peak_gflop_per_cpu_s"]
                for c, p in zip(t["cpu_ms"], peaks, strict=True)]
    return {**common.timing_summary(t), "fraction_of_peak": common.median(frac),
            "fraction_of_peak_cpu_time": common.median(frac_cpu)}


def study(a, arr: np.ndarray) -> dict:
    d = arr.shape[1]
    cfg = model.SAEConfig(variant="anthropic_2024", d=d, d_sae=a.d_sae)
    hp = sae_step.default_hparams(cfg, lr=a.lr, l1_coef=a.l1, total_steps=300,
                                  l1_warmup_frac=0.0, lr_decay_frac=0.0)
    xs = [jnp.asarray(arr[i * a.batch:(i + 1) * a.batch]) for i in range(a.steps + 1)]
    contenders = {name: contender(cfg, hp, xs[0], a.seed, without)
                  for name, without in variants().items()}
    peaks = []
    timings, finals = common.time_steps(
        contenders, xs, hp, a.rounds,
        before_round=lambda: peaks.append(
            common.matmul_rates(a.batch, d, a.d_sae, a.square, a.peak_reps)))
    flops = 10.0 * a.batch * d * a.d_sae
    return {"contenders": {n: contender_summary(t, peaks, flops) for n, t in timings.items()},
            "rebuilt_matches_library": rebuilt_matches_library(finals),
            "gemm_bound_ms_median": common.median(p["sae_gemm_bound_ms"] for p in peaks),
            "flops_per_step": flops, "gemm_rates_per_round": peaks}


def main(argv=None) -> dict:
    a = parse_args(argv)
    cpus = common.setup_process(a)
    with tempfile.TemporaryDirectory(prefix="l1_anatomy_") as tmp:
        path, acts_info = common.acts_file(a, tmp)
        arr = common.load_acts(path)
    if arr.shape[0] < (a.steps + 1) * a.batch:
        raise SystemExit(f"{arr.shape[0]} rows: need (--steps + 1) x --batch")
    res = {"study": "l1_step_anatomy", "backend": jax.default_backend(), "cpus": cpus,
           "shape": {"B": a.batch, "F": a.d_sae, "d": arr.shape[1]}, "acts": acts_info,
           "steps_per_round": a.steps, "rounds": a.rounds, "smoke": a.smoke, **study(a, arr)}
    print(json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
