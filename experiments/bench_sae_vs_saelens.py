"""Is our SAE train step faster than SAELens's on the same activations, and as good held-out?

Question: tokens/s of our jitted SAE step against the most used SAE library (SAELens, PyTorch,
run by this folder's saelens_peer.py in the peer's virtualenv), both trained on the same rows
with the same configuration and evaluated on the same held-out rows; and our step's time over
that of the encoder forward product x·W_enc alone, the floor of any exact step. Goals (issue
12): topk >= 4x SAELens `topk`, anthropic_2024 >= 3x SAELens `standard`, jumprelu >= 3x SAELens
`jumprelu`; the topk and anthropic_2024 steps <= 2x the encoder forward product.

  python experiments/bench_sae_vs_saelens.py --peer-python PEER_VENV/bin/python --with-dense
  python experiments/bench_sae_vs_saelens.py --peer-python P --pairs topk --acts acts.npy
  python experiments/bench_sae_vs_saelens.py --smoke       # tiny sizes; our side only

The peer: --peer-python is the python of a virtualenv with sae-lens and torch (../shared/bench/
README.md sets one up); without it the peer side is skipped (the reason is logged and in the
JSON) and only our side is timed. The activations: --acts, else --store's rows, else rows
generated from a known dictionary (2,048 directions in 256-d, as the harness's make_acts.py) in
a temporary folder. --bf16 compares bfloat16 like for like: our encoder product in bfloat16
(SAEConfig.matmul_dtype) against SAELens's bfloat16 autocast. --with-dense also times our dense
step (SAEConfig.sparse_capacity 0) in the same rounds: the sparse step's speed-up over it and
the held-out EV, L0 and dead fraction of both (same seeds, same rows).

Pairs: our `anthropic_2024` against SAELens `--arch standard` (ReLU, decoder-norm-weighted L1,
same coefficient), our `topk` against SAELens `--arch topk` (k = 32), our `jumprelu` against
SAELens `--arch jumprelu` (same L0 coefficient, threshold init and bandwidth 0.001; SAELens
subtracts b_dec from its input, we do not). d = 256, d_sae = 4096,
batch 4096, 300 steps, lr 3e-4 constant (our L1 warm-up and lr decay off, as SAELens's
defaults), Adam(0.9, 0.999), grad-norm clip 1 on both sides. Both train on the same rows, raw
(SAELens's normalize_activations defaults to "none"), and are evaluated on the same held-out
tail (the peer's --holdout rows). Our topk uses dead_steps = 1000, SAELens's
dead_feature_window, so AuxK is off on both sides for the whole run.

What each timing includes (the steps after the first --warmup, wall clock):
  peer: SAETrainer.fit()'s loop: per step an index_select gather of a random batch from the
        in-memory tensor, forward, backward, clip, Adam, its dead-feature bookkeeping.
  ours: per step one jitted gather of the same kind (a random batch, indices drawn per epoch,
        from the training rows held on the device) and the project's step (step.train_step,
        jitted with the state donated, as the trainer does), dispatched back to back and
        synchronised once at the end, so host dispatch overlaps compute.
Rounds alternate the order (ours, peer / peer, ours); medians over rounds and the ratio of each
round's pair are reported. Both processes run on the same cores (--cpus; the peer through
taskset, with torch.set_num_threads(len(cpus))) with the same glibc malloc settings. The peer's
CPU time per step is its process CPU time minus that of a short run (imports, data and eval
cancel out).

Fraction of peak: the matmul FLOPs our step computes (anthropic_2024: 10·B·d·F, the forward
x·W_enc, f·W_dec and the backward dW_dec, df, dW_enc; topk decodes sparsely: 4·B·d·F + 6·B·k·d)
per second, over the best float32 matmul rate measured just before and after the run in this
process (a 4096³ matmul and the step's five GEMM shapes). SAELens computes 12·B·d·F (its b_dec
subtraction adds a [B,d]x[d,F] product to the backward pass).

The encoder floor: the median time of x·W_enc + b_enc at the step's shape, measured just before
and after each of our runs (the lower one counts).

The last stdout line is one JSON object: per pair ours/peer tokens_per_s, ratio (median of
rounds), ratio_cpu_time, fraction_of_peak (of the dense step's FLOPs), step_over_encoder_forward,
quality_heldout (EV, mse, L0, dead) for both sides, with --with-dense the dense comparison, the
goals, per-round figures and this process's peak memory; `peer_skipped` says why when the peer
did not run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys
import tempfile
import time

import _bench_common as common
import jax
import jax.numpy as jnp
import numpy as np

from monosem_jax.sae import model as sae_model
from monosem_jax.sae import step as sae_step

PAIRS = {"l1": ("anthropic_2024", "standard"), "topk": ("topk", "topk"),
         "jumprelu": ("jumprelu", "jumprelu")}
# Issue 12: tokens/s over SAELens's, and our step's time over the encoder forward product alone.
GOALS = {"l1": {"ratio": 3.0, "step_over_encoder_forward": 2.0},
         "topk": {"ratio": 4.0, "step_over_encoder_forward": 2.0},
         "jumprelu": {"ratio": 3.0}}
PEER_SHORT_STEPS = 10  # timed steps of the peer's short run (its CPU-time baseline)
OUR_DEAD_STEPS = 1000  # SAELens's dead_feature_window: no AuxK in either 300-step run
SMOKE = dict(rows=4096, acts_d=32, d_sae=256, batch=256, steps=8, warmup=2, holdout=1024, k=8,
             rounds=1, peak_reps=1, square=256)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_acts_flags(ap)
    common.add_peer_flags(ap)
    common.add_process_flags(ap)
    ap.add_argument("--pairs", default="l1,topk,jumprelu",
                    help="comma list of: l1, topk, jumprelu")
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps, as the peer's")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--l1", type=float, default=3.0, help="L1 coefficient (both sides)")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--l0", type=float, default=0.3, help="jumprelu L0 coefficient (both sides)")
    ap.add_argument("--bf16", action="store_true",
                    help="bfloat16 matmuls on both sides: our SAEConfig.matmul_dtype bfloat16 "
                         "(the encoder product), SAELens's bfloat16 autocast")
    ap.add_argument("--with-dense", action="store_true",
                    help="also time our dense step (sparse_capacity 0) in the same rounds: the "
                         "sparse step's speed-up and held-out figures against it")
    ap.add_argument("--sparse-capacity", type=int, default=sae_model.SAEConfig.sparse_capacity,
                    help="our SAEConfig.sparse_capacity (0 = the dense step)")
    ap.add_argument("--holdout", type=int, default=16384, help="held-out tail rows")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak-reps", type=int, default=3, help="timed reps per matmul rate")
    ap.add_argument("--square", type=int, default=4096, help="size of the square peak matmul")
    ap.add_argument("--smoke", action="store_true", help=f"tiny sizes: {SMOKE}")
    a = common.parse_with_smoke(ap, argv, SMOKE)
    a.pairs = [p.strip() for p in a.pairs.split(",") if p.strip()]
    bad = sorted(set(a.pairs) - set(PAIRS))
    if bad:
        ap.error(f"unknown pairs {bad}; choose from {sorted(PAIRS)}")
    return a


# ----------------------------------------------------------------------------- our side


def sae_config(variant: str, a, d: int, sparse_capacity: int) -> sae_model.SAEConfig:
    return sae_model.SAEConfig(variant=variant, d=d, d_sae=a.d_sae, k=a.k,
                               k_aux=min(256, a.d_sae), dead_steps=OUR_DEAD_STEPS,
                               sparse_capacity=sparse_capacity,
                               matmul_dtype="bfloat16" if a.bf16 else "float32")


def hparams(cfg: sae_model.SAEConfig, a) -> dict:
    """SAELens's defaults: constant lr, no L1 warm-up."""
    return sae_step.default_hparams(cfg, lr=a.lr, l1_coef=a.l1, l0_coef=a.l0,
                                    total_steps=a.steps, l1_warmup_frac=0.0, lr_decay_frac=0.0)


def epoch_indices(n: int, batch: int, steps: int, seed: int) -> np.ndarray:
    """[steps, batch] row indices: a fresh permutation per epoch, as the peer's ArrayProvider."""
    rng = np.random.default_rng(seed)
    out, perm, pos = [], None, n
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = rng.permutation(n).astype(np.int32), 0
        out.append(perm[pos:pos + batch])
        pos += batch
    return np.stack(out)


def heldout_sums(cfg, hp):
    """A jitted (params, x_BD) -> (squared error, non-zero count, fired mask [F])."""

    def sums(params, x_BD):
        f_BF = sae_model.encode(cfg, params, x_BD, hp)
        xhat_BD = sae_model.decode(params, f_BF)
        return (jnp.sum(jnp.square(x_BD - xhat_BD)), jnp.sum(f_BF != 0),
                jnp.any(f_BF != 0, axis=0))

    return jax.jit(sums)


class OurRun:
    """The project's compiled step for one variant, the device-resident training rows and the
    per-step batch indices; run() trains from scratch and evaluates on the held-out rows."""

    def __init__(self, variant: str, a, train_ND: jax.Array, held_ND: np.ndarray, cpus,
                 sparse_capacity: int):
        self.a, self.cpus = a, cpus
        self.cfg = sae_config(variant, a, train_ND.shape[1], sparse_capacity)
        self.hp = hparams(self.cfg, a)
        self.train_ND, self.held_ND = train_ND, held_ND
        idx = epoch_indices(train_ND.shape[0], a.batch, a.steps, a.seed)
        self.idx = [jax.device_put(i) for i in idx]
        self.gather = jax.jit(lambda data, i: jnp.take(data, i, axis=0))
        state = self.fresh_state()
        x_BD = self.gather(train_ND, self.idx[0])
        step = jax.jit(functools.partial(sae_step.train_step, cfg=self.cfg), donate_argnums=0)
        self.step = step.lower(state, x_BD, self.hp).compile()
        jax.block_until_ready(self.step(state, x_BD, self.hp))  # first run outside the timing
        self.sums = heldout_sums(self.cfg, self.hp)

    def fresh_state(self):
        return sae_step.init_state(self.cfg, jax.random.key(self.a.seed))

    def steps(self, state, start: int, stop: int):
        metrics = None
        for i in range(start, stop):
            state, metrics = self.step(state, self.gather(self.train_ND, self.idx[i]), self.hp)
        return state, metrics

    def run(self) -> dict:
        a = self.a
        state, _ = self.steps(self.fresh_state(), 0, a.warmup)
        jax.block_until_ready(state)
        load0 = os.getloadavg()[0]
        c0, t0 = common.cpu_seconds(), time.perf_counter()
        state, metrics = self.steps(state, a.warmup, a.steps)
        jax.block_until_ready((state, metrics))
        dt, cpu = time.perf_counter() - t0, common.cpu_seconds() - c0
        timed_steps = a.steps - a.warmup
        res = {"tokens_per_s": timed_steps * a.batch / dt, "ms_per_step": 1e3 * dt / timed_steps,
               "cpu_s_per_step": cpu / timed_steps, "cpu_share": cpu / dt / len(self.cpus),
               "loadavg_1m": load0, "train_last_mse": float(metrics["mse"]),
               "train_last_loss": float(metrics["loss"])}
        res.update(self.evaluate(state["params"]))
        return res

    def evaluate(self, params) -> dict:
        """Held-out mse (per row, summed over d), explained variance, L0, dead fraction."""
        held = self.held_ND
        sse, nnz, fired = 0.0, 0, np.zeros(self.cfg.d_sae, bool)
        for s in range(0, held.shape[0], 4096):
            e, n, f = self.sums(params, jnp.asarray(held[s:s + 4096]))
            sse, nnz, fired = sse + float(e), nnz + int(n), fired | np.asarray(f)
        h64 = held.astype(np.float64)
        tot_var = float(np.sum(np.square(h64 - h64.mean(0))))
        m = held.shape[0]
        return {"mse": sse / m, "explained_variance": 1.0 - sse / tot_var, "l0": nnz / m,
                "dead_fraction": float(1.0 - fired.mean())}


def encoder_forward_ms(a, d: int) -> float:
    """Median ms of the encoder forward product alone, x·W_enc + b_enc at the step's shape: the
    floor of any exact step (only it needs the whole dictionary)."""
    rng = np.random.default_rng(0)
    x_BD = jnp.asarray(rng.standard_normal((a.batch, d), np.float32))
    w_DF = jnp.asarray(rng.standard_normal((d, a.d_sae), np.float32))
    b_F = jnp.zeros((a.d_sae,), jnp.float32)
    fn = jax.jit(lambda x, w, b: x @ w + b[None])
    return 1e3 * common.timed(fn, x_BD, w_DF, b_F, reps=max(3, a.peak_reps))[0]


def run_ours(run: OurRun, a) -> dict:
    """One timed run, with the matmul rates and the encoder product's time just before and just
    after (the load of a shared machine drifts within minutes)."""
    def rates():
        out = common.matmul_rates(a.batch, run.cfg.d, a.d_sae, a.square, a.peak_reps)
        return {**out, "encoder_forward_ms": encoder_forward_ms(a, run.cfg.d)}

    before = rates()
    res = run.run()
    res["peak"] = {"before": before, "after": rates()}
    return res


# ----------------------------------------------------------------------------- peer side


def peer_args(a, arch: str, acts: str, steps: int, threads: int) -> list[str]:
    args = ["--acts", acts, "--arch", arch, "--d-sae", str(a.d_sae), "--batch", str(a.batch),
            "--steps", str(steps), "--lr", str(a.lr), "--threads", str(threads),
            "--holdout", str(a.holdout), "--warmup", str(a.warmup), "--seed", str(a.seed)]
    return args + {"standard": ["--l1", str(a.l1)], "topk": ["--k", str(a.k)],
                   "jumprelu": ["--l0", str(a.l0)]}[arch] + (["--autocast"] if a.bf16 else [])


def run_peer(a, arch: str, acts: str, cpus, steps: int | None = None) -> dict:
    steps = steps or a.steps
    return common.run_peer(a, peer_args(a, arch, acts, steps, len(cpus)), cpus)


def peer_baselines(a, acts: str, cpus) -> dict:
    """Each pair's short peer run, whose process CPU time is subtracted from the full runs'."""
    short = {}
    for p in a.pairs:
        common.log(f"peer {p}: short run ({a.warmup + PEER_SHORT_STEPS} steps) for CPU time")
        short[p] = run_peer(a, PAIRS[p][1], acts, cpus, steps=a.warmup + PEER_SHORT_STEPS)
    return short


def run_peer_timed(a, p: str, acts: str, cpus, short: dict) -> dict:
    res = run_peer(a, PAIRS[p][1], acts, cpus)
    res["cpu_s_per_step"] = ((res["process_cpu_s"] - short["process_cpu_s"])
                             / (a.steps - short["steps"]))
    return res


# ----------------------------------------------------------------------------- rounds


def run_rounds(a, ours: dict, dense: dict, acts: str, cpus, peer_short: dict | None
               ) -> list[dict]:
    """Per round, per pair: ours, our dense step (--with-dense) and (when it can run) the peer,
    the order alternating."""
    rounds = []
    for r in range(a.rounds):
        rec = {}
        for p in a.pairs:
            sides = ["ours"] + (["dense"] if p in dense else []) + (
                ["peer"] if peer_short is not None else [])
            for side in sides if r % 2 == 0 else sides[::-1]:
                common.log(f"round {r}: {p} {side} ...")
                res = (run_ours(ours[p], a) if side == "ours"
                       else run_ours(dense[p], a) if side == "dense"
                       else run_peer_timed(a, p, acts, cpus, peer_short[p]))
                rec[f"{p}_{side}"] = res
                common.log(f"  {res['tokens_per_s']:.0f} tokens/s, {res['ms_per_step']:.0f} "
                           f"ms/step, {res['cpu_s_per_step']:.3f} CPU-s/step, EV "
                           f"{res['explained_variance']:.4f}, L0 {res['l0']:.1f}")
        rounds.append(rec)
    return rounds


# ----------------------------------------------------------------------------- summary


def peak(run: dict, key: str) -> float:
    """The better of the rates measured just before and just after one of our runs."""
    return max(run["peak"]["before"][key], run["peak"]["after"][key])


def flops_ours(a, d: int, p: str) -> float:
    """The dense step's matmul FLOPs (the sparse step does fewer: a "dense-equivalent" rate)."""
    B, F = a.batch, a.d_sae
    return 4.0 * B * d * F + 6.0 * B * a.k * d if p == "topk" else 10.0 * B * d * F


def quality(runs: list[dict]) -> dict:
    keys = ("explained_variance", "mse", "l0", "dead_fraction", "train_last_mse")
    return {key: common.median(x[key] for x in runs) for key in keys}


def ours_figures(a, d: int, p: str, ours_r: list[dict]) -> dict:
    flops = flops_ours(a, d, p)
    gflops = [flops / x["ms_per_step"] / 1e6 for x in ours_r]
    frac = [g / peak(x, "peak_gflops") for g, x in zip(gflops, ours_r, strict=True)]
    frac_cpu = [flops / x["cpu_s_per_step"] / 1e9 / peak(x, "peak_gflop_per_cpu_s")
                for x in ours_r]
    gemm_share = [min(x["peak"]["before"]["sae_gemm_bound_ms"],
                      x["peak"]["after"]["sae_gemm_bound_ms"]) / x["ms_per_step"]
                  for x in ours_r]
    over_encoder = [x["ms_per_step"] / min(x["peak"]["before"]["encoder_forward_ms"],
                                           x["peak"]["after"]["encoder_forward_ms"])
                    for x in ours_r]
    return {
        "ours_tokens_per_s": common.median(x["tokens_per_s"] for x in ours_r),
        "ours_ms_per_step": common.median(x["ms_per_step"] for x in ours_r),
        "ours_cpu_s_per_step": common.median(x["cpu_s_per_step"] for x in ours_r),
        "ours_gflops": common.median(gflops),
        "ours_fraction_of_peak": common.median(frac),
        "ours_fraction_of_peak_cpu_time": common.median(frac_cpu),
        "ours_gemm_bound_over_step_time": common.median(gemm_share),
        "ours_step_over_encoder_forward": common.median(over_encoder),
        "encoder_forward_ms": common.median(min(x["peak"]["before"]["encoder_forward_ms"],
                                               x["peak"]["after"]["encoder_forward_ms"])
                                           for x in ours_r),
        "per_round_ours": {"tokens_per_s": [x["tokens_per_s"] for x in ours_r],
                           "fraction_of_peak": frac, "fraction_of_peak_cpu_time": frac_cpu,
                           "cpu_s_per_step": [x["cpu_s_per_step"] for x in ours_r],
                           "cpu_share": [x["cpu_share"] for x in ours_r],
                           "loadavg_1m": [x["loadavg_1m"] for x in ours_r],
                           "matmul_peak_gflops_before_after": [
                               (x["peak"]["before"]["peak_gflops"],
                                x["peak"]["after"]["peak_gflops"]) for x in ours_r]},
        "matmul_rates_last_round": ours_r[-1]["peak"],
    }


def peer_figures(a, d: int, p: str, paired: list[dict], short: dict) -> dict:
    peer_r = [r[f"{p}_peer"] for r in paired]
    flops = 12.0 * a.batch * d * a.d_sae
    gflops = [flops / x["ms_per_step"] / 1e6 for x in peer_r]
    ratios = [r[f"{p}_ours"]["tokens_per_s"] / r[f"{p}_peer"]["tokens_per_s"] for r in paired]
    ratios_cpu = [r[f"{p}_peer"]["cpu_s_per_step"] / r[f"{p}_ours"]["cpu_s_per_step"]
                  for r in paired]
    frac = [g / peak(r[f"{p}_ours"], "peak_gflops") for g, r in zip(gflops, paired, strict=True)]
    frac_cpu = [flops / r[f"{p}_peer"]["cpu_s_per_step"] / 1e9
                / peak(r[f"{p}_ours"], "peak_gflop_per_cpu_s") for r in paired]
    last = peer_r[-1]
    return {
        "peer_tokens_per_s": common.median(x["tokens_per_s"] for x in peer_r),
        "ratio_median_of_rounds": common.median(ratios),
        "ratio_cpu_time_median_of_rounds": common.median(ratios_cpu),
        "peer_ms_per_step": common.median(x["ms_per_step"] for x in peer_r),
        "peer_cpu_s_per_step": common.median(x["cpu_s_per_step"] for x in peer_r),
        "peer_gflops": common.median(gflops),
        "peer_fraction_of_peak": common.median(frac),
        "peer_fraction_of_peak_cpu_time": common.median(frac_cpu),
        "peer_peak_rss_mb": common.median(x.get("peak_rss_mb", float("nan")) for x in peer_r),
        "per_round_peer": {"tokens_per_s": [x["tokens_per_s"] for x in peer_r],
                           "ratio": ratios, "ratio_cpu_time": ratios_cpu,
                           "cpu_s_per_step": [x["cpu_s_per_step"] for x in peer_r],
                           "process_cpu_share": [x["process_cpu_share"] for x in peer_r],
                           "loadavg_1m": [x["loadavg_1m"] for x in peer_r]},
        "peer_command": last["command"],
        "peer_versions": {k: last.get(k) for k in ("sae_lens_version", "torch_version",
                                                   "threads")},
        "peer_short_run_process_cpu_s": short["process_cpu_s"],
    }


def goal_fields(p: str, res: dict) -> dict:
    goals = GOALS[p]
    ratio = res.get("ratio_median_of_rounds")
    out = {"goal_ratio": goals["ratio"],
           "meets_ratio_goal": None if ratio is None else ratio >= goals["ratio"]}
    if "step_over_encoder_forward" in goals:
        out["goal_step_over_encoder_forward"] = goals["step_over_encoder_forward"]
        out["meets_encoder_floor_goal"] = (res["ours_step_over_encoder_forward"]
                                           <= goals["step_over_encoder_forward"])
    return out


def dense_figures(rounds: list[dict], p: str) -> dict:
    """Our sparse step against our dense one, same seeds and rows: speed and held-out match."""
    sparse_r, dense_r = [r[f"{p}_ours"] for r in rounds], [r[f"{p}_dense"] for r in rounds]
    q_sparse, q_dense = quality(sparse_r), quality(dense_r)
    return {"dense_ms_per_step": common.median(x["ms_per_step"] for x in dense_r),
            "sparse_speedup_over_dense": common.median(
                d["ms_per_step"] / s["ms_per_step"] for s, d in zip(sparse_r, dense_r,
                                                                    strict=True)),
            "dense_quality_heldout": q_dense,
            "sparse_minus_dense": {k: q_sparse[k] - q_dense[k]
                                   for k in ("explained_variance", "l0", "dead_fraction")}}


def pair_summary(a, d: int, p: str, rounds: list[dict], peer_short: dict | None) -> dict:
    ours_r = [r[f"{p}_ours"] for r in rounds]
    paired = [r for r in rounds if f"{p}_peer" in r]
    res = {"ours_variant": PAIRS[p][0], "peer_arch": PAIRS[p][1]}
    res.update(ours_figures(a, d, p, ours_r))
    if paired:
        res.update(peer_figures(a, d, p, paired, peer_short[p]))
    res.update(goal_fields(p, res))
    res["quality_heldout"] = {"ours": quality(ours_r)}
    if f"{p}_dense" in rounds[0]:
        res.update(dense_figures(rounds, p))
    if paired:
        res["quality_heldout"]["peer"] = quality([r[f"{p}_peer"] for r in paired])
    return res


def config_record(a, d: int, acts_info: dict, cpus) -> dict:
    return {"d": d, "d_sae": a.d_sae, "batch": a.batch, "steps": a.steps, "warmup": a.warmup,
            "lr": a.lr, "l1_coef": a.l1, "l0_coef": a.l0, "k": a.k, "holdout_rows": a.holdout,
            "sparse_capacity": a.sparse_capacity, "with_dense": a.with_dense, "bf16": a.bf16,
            "rounds": a.rounds, "cpus": cpus, "acts": acts_info, "smoke": a.smoke,
            "input_scaling": "none (raw rows, as SAELens normalize_activations='none')",
            "ours_dead_steps": OUR_DEAD_STEPS, "malloc_env": common.malloc_env(a),
            "flops_per_step_dense_equivalent": {
                "ours": {"l1": "10*B*d*F", "jumprelu": "10*B*d*F", "topk": "4*B*d*F + 6*B*k*d"},
                "peer": "12*B*d*F"}}


# ----------------------------------------------------------------------------- entry


def bench(a, acts: str, acts_info: dict, cpus) -> dict:
    arr = common.load_acts(acts)
    n, d = arr.shape
    if a.holdout >= n or n - a.holdout < a.batch:
        raise SystemExit(f"{n} rows: need more than --holdout {a.holdout} + --batch {a.batch}")
    train_ND = jax.device_put(arr[: n - a.holdout])  # the same split as peer_saelens.py
    held_ND = arr[n - a.holdout:]
    ours = {p: OurRun(PAIRS[p][0], a, train_ND, held_ND, cpus, a.sparse_capacity)
            for p in a.pairs}
    dense = ({p: OurRun(PAIRS[p][0], a, train_ND, held_ND, cpus, 0) for p in a.pairs}
             if a.with_dense else {})
    skipped = common.peer_unavailable(a)
    if skipped:
        common.log(f"peer skipped: {skipped}; timing our side only")
    peer_short = None if skipped else peer_baselines(a, acts, cpus)
    rounds = run_rounds(a, ours, dense, acts, cpus, peer_short)
    out = {"bench": "sae_step_vs_saelens", "command": " ".join([sys.executable, *sys.argv]),
           "peer_skipped": skipped, "config": config_record(a, d, acts_info, cpus),
           "versions": {"jax": jax.__version__, "backend": jax.default_backend(),
                        "devices": [str(dev) for dev in jax.devices()]}}
    out.update({p: pair_summary(a, d, p, rounds, peer_short) for p in a.pairs})
    # This process's peak resident memory (ours only: the peer runs in a child process).
    out["ours_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv=None) -> dict:
    a = parse_args(argv)
    cpus = common.setup_process(a)
    with tempfile.TemporaryDirectory(prefix="bench_sae_") as tmp:
        acts, acts_info = common.acts_file(a, tmp)
        res = bench(a, acts, acts_info, cpus)
    print(json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
