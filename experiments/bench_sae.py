"""Our SAE train step against SAELens on the same activations, same configuration, one run.

Question: how fast is our jitted SAE step (tokens/s) against the most used SAE library (SAELens,
PyTorch, through the peer harness in /work/shared/bench), and what fraction of this machine's
float32 matmul peak does it reach?

  python experiments/bench_sae.py                      # L1 and TopK, 2 alternating rounds
  python experiments/bench_sae.py --study-topk         # the TopK encode alternatives only

Pairs: our `anthropic_2024` against SAELens `--arch standard` (ReLU, decoder-norm-weighted L1,
same coefficient), our `topk` against SAELens `--arch topk` (k = 32). d = 256, d_sae = 4096,
batch 4096, 300 steps, lr 3e-4 constant (our L1 warm-up and lr decay off, as SAELens's defaults),
Adam(0.9, 0.999), grad-norm clip 1 on both sides. Both train on the same rows of the same .npy,
raw (SAELens's normalize_activations defaults to "none", so neither side rescales), and are
evaluated on the same held-out tail (the peer's --holdout rows). Our topk uses dead_steps = 1000,
SAELens's dead_feature_window, so AuxK is off on both sides for the whole 300-step run.

What each timing includes (both: the steps after the first `--warmup`, wall clock):
  peer: SAETrainer.fit()'s loop: per step an index_select gather of a random batch from the
        in-memory tensor, forward, backward, clip, Adam, its dead-feature bookkeeping.
  ours: per step one jitted gather of the same kind (a random batch, indices drawn per epoch,
        from the training rows held on the device) and the project's compiled step
        (train.compile_step: jit, state donated), dispatched back to back and synchronised
        once at the end (XLA runs them in order), so host dispatch overlaps compute.

Rounds alternate the order (ours, peer / peer, ours) so that drift in the load of this shared
machine hits both sides alike; medians over rounds and the ratio of each round's pair are
reported. Both processes are pinned to the same cores (--cpus, sched_setaffinity / taskset),
the peer with torch.set_num_threads(len(cpus)), and both get the same glibc malloc settings.

Fraction of peak: the matmul FLOPs the variant needs (10·B·d·F for anthropic_2024: forward
x·W_enc, f·W_dec; backward dW_dec, df, dW_enc; no pre-encoder bias, so no 6th GEMM; our topk
decodes sparsely, so 4·B·d·F + 6·B·k·d; "gemm_bound" still sums the five dense GEMMs) per
second, over the best float32 matmul rate measured in the same round in this process (a
4096³ matmul as gemm_peak.py's jax backend, and each of the step's five GEMM shapes in the
orientation XLA compiles them). SAELens needs 12·B·d·F (its b_dec subtraction adds a
[B,d]x[d,F] product in the backward pass).

Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from monosem_jax.sae import losses as sae_losses
from monosem_jax.sae import model as sae_model
from monosem_jax.sae import step as sae_step
from monosem_jax.sae import train as sae_train

SHARED = "/work/shared/bench"
# glibc: XLA allocates the step's temporaries (~200-300 MB) as one block per execution; glibc
# serves blocks that large with a fresh mmap, so every step page-faults all of it in again
# (~55k minor faults, ~0.1 CPU-s per step here). One arena, no mmap and no trimming keep the
# block in the heap between steps. torch allocates its [B, F] tensors the same way, so both
# processes get the same settings (--no-malloc-tuning to measure without).
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
              "MALLOC_TRIM_THRESHOLD_": str(1 << 36), "MALLOC_TOP_PAD_": str(1 << 26)}
PEER_SHORT_STEPS = 10  # steps after warm-up of the peer's short run (its CPU-time baseline)
GOALS = {"l1": {"ratio": 2.5, "fraction_of_peak": 0.65}, "topk": {"ratio": 2.0}}
PAIRS = {"l1": ("anthropic_2024", "standard"), "topk": ("topk", "topk")}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--acts", default="/tmp/acts_256.npy",
                    help="float32 [N, d] .npy; created with make_acts.py if missing")
    ap.add_argument("--peer-python", default="/tmp/peer-venv/bin/python")
    ap.add_argument("--peer-script", default=os.path.join(SHARED, "peer_saelens.py"))
    ap.add_argument("--make-acts", default=os.path.join(SHARED, "make_acts.py"))
    ap.add_argument("--pairs", default="l1,topk", help="comma list of: l1, topk")
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps, as the peer's")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--l1", type=float, default=3.0, help="L1 coefficient (both sides)")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--holdout", type=int, default=16384)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpus", default="0,1", help="cores for both processes")
    ap.add_argument("--peak-reps", type=int, default=3)
    ap.add_argument("--no-malloc-tuning", action="store_true")
    ap.add_argument("--skip-peer", action="store_true", help="our side only (debugging)")
    ap.add_argument("--no-what-if", action="store_true",
                    help="skip the extra TopK run with the former dense-decode loss")
    ap.add_argument("--study-topk", action="store_true",
                    help="time the TopK encode alternatives (encode alone and in the full step)")
    ap.add_argument("--study-l1", action="store_true",
                    help="where the L1 step's time goes: the step with parts removed")
    ap.add_argument("--study-steps", type=int, default=6, help="timed steps per study round")
    ap.add_argument("--study-rounds", type=int, default=3)
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- helpers


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def med(xs):
    return statistics.median(xs) if xs else None


def timed(fn, *args, reps=3, warm=1):
    """Median wall seconds and CPU seconds (this process) of fn(*args), synchronised."""
    for _ in range(warm):
        jax.block_until_ready(fn(*args))
    walls, cpus = [], []
    for _ in range(reps):
        c, t = cpu_seconds(), time.perf_counter()
        jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - t)
        cpus.append(cpu_seconds() - c)
    return med(walls), med(cpus)


def ensure_acts(a) -> None:
    if os.path.exists(a.acts):
        return
    log(f"creating {a.acts} with {a.make_acts}")
    subprocess.run([sys.executable, a.make_acts, "--out", a.acts], check=True)


def sae_cfg_for(variant: str, a) -> sae_model.SAEConfig:
    return sae_model.SAEConfig(variant=variant, d=a.d, d_sae=a.d_sae, k=a.k, dead_steps=1000)


def hparams_for(cfg: sae_model.SAEConfig, a):
    return sae_step.default_hparams(cfg, lr=a.lr, l1_coef=a.l1, total_steps=a.steps,
                                    l1_warmup_frac=0.0, lr_decay_frac=0.0)


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


@contextlib.contextmanager
def patched(patch: list):
    """Temporarily replace [(module or dict, name, value)] (attributes, or dict items)."""
    get = lambda obj, key: obj[key] if isinstance(obj, dict) else getattr(obj, key)

    def put(obj, key, value):
        if isinstance(obj, dict):
            obj[key] = value
        else:
            setattr(obj, key, value)

    saved = [(obj, key, get(obj, key)) for obj, key, _ in patch]
    for obj, key, value in patch:
        put(obj, key, value)
    try:
        yield
    finally:
        for obj, key, value in reversed(saved):
            put(obj, key, value)


# ----------------------------------------------------------------------------- matmul peak


def matmul_rates(a, reps: int) -> dict:
    """GFLOP/s (wall) and GFLOP per CPU-second of float32 matmuls, measured now, in-process.

    square: C = A @ B, 4096³ (gemm_peak.py's jax backend). The five GEMMs of one SAE step, in
    the orientation XLA compiles them (dot_general contracting dims as in the step's HLO).
    """
    B, D, F = a.batch, a.d, a.d_sae
    rng = np.random.default_rng(0)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s, dtype=np.float32))
    dots = {
        "square_4096": (lambda x, y: x @ y, (4096, 4096), (4096, 4096), 2.0 * 4096**3),
        "enc_fwd x@W_enc": (lambda x, w: x @ w, (B, D), (D, F), 2.0 * B * D * F),
        "dec_fwd f@W_dec": (lambda f, w: f @ w, (B, F), (F, D), 2.0 * B * D * F),
        "bwd_df g@W_dec^T": (lambda g, w: jnp.einsum("bd,fd->bf", g, w), (B, D), (F, D),
                             2.0 * B * D * F),
        "bwd_dW_dec f^T@g": (lambda f, g: jnp.einsum("bf,bd->fd", f, g), (B, F), (B, D),
                             2.0 * B * D * F),
        "bwd_dW_enc x^T@dz": (lambda x, dz: jnp.einsum("bd,bf->df", x, dz), (B, D), (B, F),
                              2.0 * B * D * F),
        # not in the step: dW_dec as (gᵀ f)ᵀ, dW_enc's GEMM orientation, then a transpose of
        # the small [d, F] result (the barrier stops XLA folding the transpose into the dot)
        "alt_dW_dec (g^T@f)^T": (lambda f, g: jax.lax.optimization_barrier(
            jnp.einsum("bd,bf->df", g, f)).T, (B, F), (B, D), 2.0 * B * D * F),
    }
    out = {}
    for name, (fn, sa, sb, flops) in dots.items():
        wall, cpu = timed(jax.jit(fn), arr(*sa), arr(*sb), reps=reps, warm=1)
        out[name] = {"gflops": flops / wall / 1e9, "gflop_per_cpu_s": flops / cpu / 1e9,
                     "ms": 1e3 * wall}
    sae_names = [n for n in dots if n != "square_4096" and not n.startswith("alt_")]
    # The step's five GEMMs run back to back at the rates just measured: a matmul-only bound.
    out["sae_gemm_bound_ms"] = sum(out[n]["ms"] for n in sae_names)
    out["peak_gflops"] = max(out[n]["gflops"] for n in dots)
    out["peak_gflop_per_cpu_s"] = max(out[n]["gflop_per_cpu_s"] for n in dots)
    return out


# ----------------------------------------------------------------------------- our side


class Ours:
    """Compiled step, device-resident training rows and per-step batch indices for one variant."""

    def __init__(self, variant: str, a, train_ND: jax.Array, held_ND: np.ndarray, loss=None):
        self.a, self.variant = a, variant
        self.cfg = sae_cfg_for(variant, a)
        self.hp = hparams_for(self.cfg, a)
        self.train_ND, self.held_ND = train_ND, held_ND
        idx = epoch_indices(train_ND.shape[0], a.batch, a.steps, a.seed)
        self.idx = [jax.device_put(i) for i in idx]
        self.gather = jax.jit(lambda data, i: jnp.take(data, i, axis=0))
        cfg, hp = self.cfg, self.hp
        # The project's compiled step (ahead of time, so that `loss`, a what-if replacement of
        # the variant's loss, is the one traced); compiled and run once outside timed runs.
        state = sae_step.init_state(cfg, jax.random.key(a.seed))
        x_BD = self.gather(self.train_ND, self.idx[0])
        # step.py binds the LOSSES dict itself, so the what-if replaces the dict's item.
        with patched([] if loss is None else [(sae_losses.LOSSES, variant, loss)]):
            self.step = sae_train.compile_step(cfg).lower(state, x_BD, hp).compile()
        jax.block_until_ready(self.step(state, x_BD, hp))

        def eval_chunk(params, x_BD):
            f_BF = sae_model.encode(cfg, params, x_BD, hp)
            xhat_BD = sae_model.decode(params, f_BF)
            return (jnp.sum(jnp.square(x_BD - xhat_BD)), jnp.sum(f_BF != 0),
                    jnp.any(f_BF != 0, axis=0))

        self.eval_chunk = jax.jit(eval_chunk)

    def run(self) -> dict:
        a = self.a
        state = sae_step.init_state(self.cfg, jax.random.key(a.seed))
        for i in range(a.warmup):
            state, metrics = self.step(state, self.gather(self.train_ND, self.idx[i]), self.hp)
        jax.block_until_ready(state)
        load0 = os.getloadavg()[0]
        c0, t0 = cpu_seconds(), time.perf_counter()
        for i in range(a.warmup, a.steps):
            state, metrics = self.step(state, self.gather(self.train_ND, self.idx[i]), self.hp)
        jax.block_until_ready((state, metrics))
        dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        timed_steps = a.steps - a.warmup
        res = {"tokens_per_s": timed_steps * a.batch / dt, "ms_per_step": 1e3 * dt / timed_steps,
               "cpu_s_per_step": cpu / timed_steps,
               "cpu_share": cpu / dt / len(a.cpu_list), "loadavg_1m": load0,
               "train_last_mse": float(metrics["mse"]), "train_last_loss": float(metrics["loss"])}
        res.update(self.evaluate(state["params"]))
        return res

    def evaluate(self, params) -> dict:
        """Held-out mse (per row, summed over d), explained variance, L0, dead fraction."""
        held = self.held_ND
        sse, nnz, fired = 0.0, 0, np.zeros(self.cfg.d_sae, bool)
        for s in range(0, held.shape[0], 4096):
            e, n, f = self.eval_chunk(params, jnp.asarray(held[s:s + 4096]))
            sse, nnz, fired = sse + float(e), nnz + int(n), fired | np.asarray(f)
        h64 = held.astype(np.float64)
        tot_var = float(np.sum(np.square(h64 - h64.mean(0))))
        m = held.shape[0]
        return {"mse": sse / m, "explained_variance": 1.0 - sse / tot_var, "l0": nnz / m,
                "dead_fraction": float(1.0 - fired.mean())}


# ----------------------------------------------------------------------------- peer side


def run_peer(a, arch: str, steps: int | None = None) -> dict:
    cmd = ["taskset", "-c", a.cpus, a.peer_python, a.peer_script, "--acts", a.acts,
           "--arch", arch, "--d-sae", str(a.d_sae), "--batch", str(a.batch),
           "--steps", str(steps or a.steps), "--lr", str(a.lr),
           "--threads", str(len(a.cpu_list)),
           "--holdout", str(a.holdout), "--warmup", str(a.warmup), "--seed", str(a.seed)]
    cmd += ["--l1", str(a.l1)] if arch == "standard" else ["--k", str(a.k)]
    load0 = os.getloadavg()[0]
    c0, t0 = child_cpu_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, child_cpu_seconds() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"peer failed ({proc.returncode}): {' '.join(cmd)}\n"
                           f"{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    # Whole process (imports, data, fit, eval): only a rough view of how contended it ran.
    res["process_cpu_share"] = cpu / wall / len(a.cpu_list)
    res["process_cpu_s"] = cpu
    res["loadavg_1m"] = load0
    res["command"] = " ".join(cmd)
    return res


# ----------------------------------------------------------------------------- main bench


def bench(a) -> dict:
    arr = np.load(a.acts)
    assert arr.dtype == np.float32 and arr.ndim == 2, (arr.dtype, arr.shape)
    n, a.d = arr.shape
    train_ND = jax.device_put(arr[: n - a.holdout])  # same split as peer_saelens.py
    held_ND = arr[n - a.holdout:]
    pairs = [p.strip() for p in a.pairs.split(",") if p.strip()]
    ours = {p: Ours(PAIRS[p][0], a, train_ND, held_ND) for p in pairs}
    what_if = None
    if "topk" in pairs and not a.no_what_if:
        what_if = Ours("topk", a, train_ND, held_ND, loss=loss_topk_dense_decode)
    # The peer's CPU time per step: its process CPU in a short run, subtracted from each full
    # run's, leaves the CPU time of the extra steps (imports, data, eval cancel out).
    peer_short = {}
    if not a.skip_peer:
        for p in pairs:
            log(f"peer {p}: short run ({a.warmup + PEER_SHORT_STEPS} steps) for CPU time")
            peer_short[p] = run_peer(a, PAIRS[p][1], steps=a.warmup + PEER_SHORT_STEPS)
    rounds = []
    for r in range(a.rounds):
        rec = {}
        for p in pairs:
            order = ("ours", "peer") if r % 2 == 0 else ("peer", "ours")
            for side in order:
                if side == "peer" and a.skip_peer:
                    continue
                log(f"round {r}: {p} {side} ...")
                if side == "ours":
                    # the matmul peak just before and just after: the load of this shared
                    # machine drifts within minutes
                    before = matmul_rates(a, a.peak_reps)
                    res = ours[p].run()
                    res["peak"] = {"before": before, "after": matmul_rates(a, a.peak_reps)}
                else:
                    res = run_peer(a, PAIRS[p][1])
                    short = peer_short[p]
                    res["cpu_s_per_step"] = ((res["process_cpu_s"] - short["process_cpu_s"])
                                             / (a.steps - short["steps"]))
                rec[f"{p}_{side}"] = res
                log(f"  {res['tokens_per_s']:.0f} tokens/s, {res['ms_per_step']:.0f} ms/step, "
                    f"{res['cpu_s_per_step']:.3f} CPU-s/step, "
                    f"EV {res['explained_variance']:.4f}, l0 {res['l0']:.1f}")
                if side == "ours" and p == "topk" and what_if is not None:
                    log(f"round {r}: topk what-if (the former dense-decode loss) ...")
                    rec["topk_what_if"] = res = what_if.run()
                    log(f"  {res['tokens_per_s']:.0f} tokens/s, "
                        f"{res['cpu_s_per_step']:.3f} CPU-s/step, "
                        f"EV {res['explained_variance']:.4f}, l0 {res['l0']:.1f}")
        rounds.append(rec)
    return summarise(a, pairs, rounds, peer_short)


def _peak(run: dict, key: str) -> float:
    """The better of the peaks measured just before and just after one of our runs."""
    return max(run["peak"]["before"][key], run["peak"]["after"][key])


def summarise(a, pairs, rounds, peer_short) -> dict:
    B, D, F = a.batch, a.d, a.d_sae
    # Matmul FLOPs each side really computes. Our topk decodes sparsely: 4·B·d·F for the
    # encoder (forward and dW_enc; no dx is needed) plus 6·B·k·d for the gathered decode
    # (forward, d values, the dW_dec scatter-add).
    flops_ours_of = {"l1": 10.0 * B * D * F, "topk": 4.0 * B * D * F + 6.0 * B * a.k * D}
    flops_peer = 12.0 * B * D * F
    out = {
        "bench": "sae_step_vs_saelens",
        "command": " ".join([sys.executable, *sys.argv]),
        "config": {"d": D, "d_sae": F, "batch": B, "steps": a.steps, "warmup": a.warmup,
                   "lr": a.lr, "l1_coef": a.l1, "k": a.k, "holdout_rows": a.holdout,
                   "rounds": a.rounds, "cpus": a.cpus, "acts": a.acts,
                   "input_scaling": "none (raw rows, as SAELens normalize_activations='none')",
                   "ours_topk_dead_steps": 1000,
                   "malloc_env": {} if a.no_malloc_tuning else MALLOC_ENV},
        "versions": {"jax": jax.__version__, "backend": jax.default_backend(),
                     "devices": [str(d) for d in jax.devices()]},
        "timing_includes": {
            "ours": "steps warmup..steps-1 (wall): per step a jitted gather of a random batch "
                    "from device-resident training rows + the compiled, donated train step; "
                    "synchronised once at the end",
            "peer": "peer_saelens.py tokens_per_s: SAETrainer.fit() loop after its warm-up "
                    "steps (index_select batch gather, forward, backward, clip, Adam, "
                    "dead-feature bookkeeping)"},
        "flops_per_step": {"ours": {p: flops_ours_of[p] for p in pairs}, "peer": flops_peer,
                           "ours_formula": {"l1": "10*B*d*F", "topk": "4*B*d*F + 6*B*k*d"},
                           "peer_formula": "12*B*d*F"},
        "metric_notes": {
            "ratio": "ours tokens/s over the peer's, each round's pair (wall clock)",
            "ratio_cpu_time": "the same in tokens per CPU-second (ours: the timed loop's "
                              "process CPU; peer: process CPU of the full run minus a "
                              f"{a.warmup + PEER_SHORT_STEPS}-step run) -- less sensitive "
                              "to the other jobs on this shared 2-core machine; busy-waiting "
                              "threads count as CPU on both sides",
            "fraction_of_peak": "our matmul FLOP/s over the best float32 matmul rate measured "
                                "just before / after the run (4096^3 and the step's 5 GEMMs)",
            "fraction_of_peak_cpu_time": "the same per CPU-second on both sides",
            "gemm_bound_over_step_time": "time of the step's 5 GEMMs alone at their measured "
                                         "rates over the step's time"},
    }
    for p in pairs:
        flops_ours = flops_ours_of[p]
        ours_r = [r[f"{p}_ours"] for r in rounds]
        paired = [r for r in rounds if f"{p}_peer" in r]
        peer_r = [r[f"{p}_peer"] for r in paired]
        tps_o = [x["tokens_per_s"] for x in ours_r]
        tps_p = [x["tokens_per_s"] for x in peer_r]
        ratios = [r[f"{p}_ours"]["tokens_per_s"] / r[f"{p}_peer"]["tokens_per_s"]
                  for r in paired]
        ratios_cpu = [r[f"{p}_peer"]["cpu_s_per_step"] / r[f"{p}_ours"]["cpu_s_per_step"]
                      for r in paired]
        gflops_o = [flops_ours / x["ms_per_step"] / 1e6 for x in ours_r]
        frac = [g / _peak(x, "peak_gflops") for g, x in zip(gflops_o, ours_r, strict=True)]
        frac_sq = [g / max(x["peak"]["before"]["square_4096"]["gflops"],
                           x["peak"]["after"]["square_4096"]["gflops"])
                   for g, x in zip(gflops_o, ours_r, strict=True)]
        frac_cpu = [flops_ours / x["cpu_s_per_step"] / 1e9 / _peak(x, "peak_gflop_per_cpu_s")
                    for x in ours_r]
        gemm_share = [min(x["peak"]["before"]["sae_gemm_bound_ms"],
                          x["peak"]["after"]["sae_gemm_bound_ms"]) / x["ms_per_step"]
                      for x in ours_r]
        gflops_p = [flops_peer / x["ms_per_step"] / 1e6 for x in peer_r]
        frac_p = [g / _peak(r[f"{p}_ours"], "peak_gflops")
                  for g, r in zip(gflops_p, paired, strict=True)]
        frac_p_cpu = [flops_peer / r[f"{p}_peer"]["cpu_s_per_step"] / 1e9
                      / _peak(r[f"{p}_ours"], "peak_gflop_per_cpu_s") for r in paired]
        ours_variant, peer_arch = PAIRS[p]
        res = {
            "ours_variant": ours_variant, "peer_arch": peer_arch,
            "ours_tokens_per_s": med(tps_o), "peer_tokens_per_s": med(tps_p),
            "ratio_median_of_rounds": med(ratios),
            "ratio_of_medians": med(tps_o) / med(tps_p) if tps_p else None,
            "ratio_cpu_time_median_of_rounds": med(ratios_cpu),
            "ours_ms_per_step": med([x["ms_per_step"] for x in ours_r]),
            "peer_ms_per_step": med([x["ms_per_step"] for x in peer_r]),
            "ours_cpu_s_per_step": med([x["cpu_s_per_step"] for x in ours_r]),
            "peer_cpu_s_per_step": med([x["cpu_s_per_step"] for x in peer_r]),
            "ours_gflops": med(gflops_o), "peer_gflops": med(gflops_p),
            "ours_fraction_of_peak": med(frac),
            "ours_fraction_of_peak_cpu_time": med(frac_cpu),
            "ours_fraction_of_square_matmul": med(frac_sq),
            "ours_gemm_bound_over_step_time": med(gemm_share),
            "peer_fraction_of_peak": med(frac_p),
            "peer_fraction_of_peak_cpu_time": med(frac_p_cpu),
            "goal_ratio": GOALS[p]["ratio"],
            "meets_ratio_goal": (med(ratios) >= GOALS[p]["ratio"]) if ratios else None,
            "per_round": {"ours_tokens_per_s": tps_o, "peer_tokens_per_s": tps_p,
                          "ratio": ratios, "ratio_cpu_time": ratios_cpu,
                          "ours_fraction_of_peak": frac,
                          "ours_fraction_of_peak_cpu_time": frac_cpu,
                          "ours_cpu_s_per_step": [x["cpu_s_per_step"] for x in ours_r],
                          "peer_cpu_s_per_step": [x["cpu_s_per_step"] for x in peer_r],
                          "ours_cpu_share": [x["cpu_share"] for x in ours_r],
                          "peer_process_cpu_share": [x["process_cpu_share"] for x in peer_r],
                          "loadavg_1m_ours": [x["loadavg_1m"] for x in ours_r],
                          "loadavg_1m_peer": [x["loadavg_1m"] for x in peer_r],
                          "matmul_peak_gflops_before_after": [
                              (x["peak"]["before"]["peak_gflops"],
                               x["peak"]["after"]["peak_gflops"]) for x in ours_r]},
            "matmul_rates_last_round": ours_r[-1]["peak"],
            "quality_heldout": {
                side: {key: med([x[key] for x in runs])
                       for key in ("explained_variance", "mse", "l0", "dead_fraction",
                                   "train_last_mse")}
                for side, runs in (("ours", ours_r), ("peer", peer_r)) if runs},
        }
        if "fraction_of_peak" in GOALS[p]:
            res["goal_fraction_of_peak"] = GOALS[p]["fraction_of_peak"]
            res["meets_fraction_of_peak_goal"] = med(frac) >= GOALS[p]["fraction_of_peak"]
        if peer_r:
            res["peer_command"] = peer_r[-1]["command"]
            res["peer_versions"] = {"sae_lens": peer_r[-1]["sae_lens_version"],
                                    "torch": peer_r[-1]["torch_version"],
                                    "threads": peer_r[-1]["threads"]}
            res["peer_short_run_process_cpu_s"] = peer_short[p]["process_cpu_s"]
        out[p] = res
    wi = [r for r in rounds if "topk_what_if" in r]
    if wi:
        out["topk_what_if_dense_decode"] = {
            "what": "NOT the project's step: our topk step with losses.loss_topk replaced by "
                    "bench_sae.loss_topk_dense_decode (x_hat = f_BF @ W_dec, the project's "
                    "loss before the sparse decode; same loss while no latent is dead)",
            "tokens_per_s": med([r["topk_what_if"]["tokens_per_s"] for r in wi]),
            "ratio_vs_peer_median_of_rounds": med([
                r["topk_what_if"]["tokens_per_s"] / r["topk_peer"]["tokens_per_s"]
                for r in wi if "topk_peer" in r]),
            "sparse_speedup_vs_dense": med([r["topk_ours"]["tokens_per_s"]
                                            / r["topk_what_if"]["tokens_per_s"] for r in wi]),
            "sparse_speedup_vs_dense_cpu_time": med([r["topk_what_if"]["cpu_s_per_step"]
                                                     / r["topk_ours"]["cpu_s_per_step"]
                                                     for r in wi]),
            "per_round_tokens_per_s": [r["topk_what_if"]["tokens_per_s"] for r in wi],
            "quality_heldout": {key: med([r["topk_what_if"][key] for r in wi])
                                for key in ("explained_variance", "mse", "l0",
                                            "dead_fraction")}}
    return out


# ----------------------------------------------------------------------------- TopK study
# Alternatives to the TopK activation, timed alone (forward + VJP on real pre-activations) and
# inside the full train step (monkeypatched into model.topk_activation / losses.LOSSES["topk"]).


def _scatter_rows(z_BF, idx_BK, vals_BK):
    rows_B1 = jnp.arange(z_BF.shape[0])[:, None]
    return jnp.zeros_like(z_BF).at[rows_B1, idx_BK].set(vals_BK, unique_indices=True)


def _mask_k(vals_BK, k_max, k):
    if k is None:
        return vals_BK
    return jnp.where((jnp.arange(k_max) < k)[None], vals_BK, 0.0)


def alt_approx_scatter(z_BF, k_max, k=None):
    """lax.approx_max_k (recall_target 0.95, the default), ReLU, scatter."""
    vals_BK, idx_BK = jax.lax.approx_max_k(z_BF, k_max)
    return _scatter_rows(z_BF, idx_BK, jax.nn.relu(_mask_k(vals_BK, k_max, k)))


def _kth_value(vals_BK, k_max, k):
    # A reduction (not a slice) of top_k's values: XLA:CPU rewrites sort+slice into its TopK
    # call only while the slice is the whole top-k block; slicing one column of it falls back
    # to a full sort of each row (~20x slower).
    if k is None:
        return jnp.min(vals_BK, axis=1, keepdims=True)
    return jnp.min(jnp.where((jnp.arange(k_max) < k)[None], vals_BK, jnp.inf), axis=1,
                   keepdims=True)


def alt_threshold(z_BF, k_max, k=None):
    """k-th value from lax.top_k, then an elementwise mask (gradient: mask only)."""
    t_B1 = _kth_value(jax.lax.top_k(jax.lax.stop_gradient(z_BF), k_max)[0], k_max, k)
    return jnp.where(z_BF >= t_B1, jax.nn.relu(z_BF), 0.0)


def _group_prefilter(z_BF, k_max, group):
    """Exact top-k via group maxima: the top k lie in the k groups with the largest maxima."""
    b, f = z_BF.shape
    zg = z_BF.reshape(b, f // group, group)
    _, gi_BK = jax.lax.top_k(jnp.max(zg, axis=2), k_max)
    cand = jnp.take_along_axis(zg, gi_BK[:, :, None], axis=1).reshape(b, k_max * group)
    vals_BK, ci_BK = jax.lax.top_k(cand, k_max)
    idx_BK = jnp.take_along_axis(gi_BK, ci_BK // group, axis=1) * group + ci_BK % group
    return vals_BK, idx_BK


def alt_group_scatter(group):
    def fn(z_BF, k_max, k=None):
        vals_BK, idx_BK = _group_prefilter(jax.lax.stop_gradient(z_BF), k_max, group)
        vals_BK = jnp.take_along_axis(z_BF, idx_BK, axis=1)  # differentiable gather
        return _scatter_rows(z_BF, idx_BK, jax.nn.relu(_mask_k(vals_BK, k_max, k)))
    fn.__doc__ = f"group maxima (groups of {group}) prefilter, top_k of the candidates, scatter"
    return fn


def alt_bisect(z_BF, k_max, k=None):
    """k-th value by 32 bisection passes (compare + count) on order-preserving uint32 keys."""
    kk = k_max if k is None else k
    bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(z_BF), jnp.uint32)
    key = jnp.where((bits >> 31) == 1, ~bits, bits | jnp.uint32(1 << 31))
    lo = jnp.min(key, axis=1, keepdims=True)
    hi = jnp.max(key, axis=1, keepdims=True)

    def body(_, c):
        lo, hi = c
        mid = lo + (hi - lo + 1) // 2
        ok = jnp.sum((key >= mid).astype(jnp.int32), axis=1, keepdims=True) >= kk
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    t, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
    return jnp.where(key >= t, jax.nn.relu(z_BF), 0.0)


def loss_topk_dense_decode(params, x_BD, hp, dead_F, cfg):
    """loss_topk as it was before the sparse decode: x̂ = f_BF @ W_dec with the dense [B, F]
    TopK activation (model.topk_activation, which the TopK study patches)."""
    # Same value as losses.loss_topk while nothing is dead (no AuxK term; dead_steps = 1000 in
    # this bench), up to float summation order.
    del dead_F
    x_BD = x_BD.astype(jnp.float32)
    z_BF = sae_model.preacts_pre_bias(params, x_BD)
    f_BF = sae_model.topk_activation(z_BF, cfg.k, hp["k"])
    xhat_BD = sae_model.decode(params, f_BF)
    mse = jnp.mean(jnp.sum(jnp.square(x_BD - xhat_BD), axis=1))
    return mse, {"f_BF": f_BF, "xhat_BD": xhat_BD, "mse": mse,
                 "auxk": jnp.zeros((), jnp.float32)}


def time_steps(a, cfg, compiled: dict, xs, hp, patches=None, before_round=None):
    """Wall and CPU ms per step of each compiled step over `a.study_rounds` rounds (the order
    alternating), each from a fresh state (initialised under its `patches`, whose optimizer
    state structure may differ); returns (timings, final (state, metrics) per name)."""
    names = list(compiled)
    timings = {n: {"wall_ms": [], "cpu_ms": []} for n in names}
    finals = {}
    for r in range(a.study_rounds):
        if before_round is not None:
            before_round()
        for name in (names if r % 2 == 0 else names[::-1]):
            with patched((patches or {}).get(name, [])):
                state = sae_step.init_state(cfg, jax.random.key(a.seed))
            state, m = compiled[name](state, xs[0], hp)
            jax.block_until_ready(state)
            c0, t0 = cpu_seconds(), time.perf_counter()
            for x_BD in xs[1:]:
                state, m = compiled[name](state, x_BD, hp)
            jax.block_until_ready(state)
            timings[name]["wall_ms"].append(1e3 * (time.perf_counter() - t0) / a.study_steps)
            timings[name]["cpu_ms"].append(1e3 * (cpu_seconds() - c0) / a.study_steps)
            finals[name] = (state, m)
        log(f"study round {r}: " + ", ".join(
            f"{n}: {timings[n]['wall_ms'][-1]:.0f}" for n in names))
    return timings, finals


def study_topk(a) -> dict:
    arr = np.load(a.acts, mmap_mode="r")
    a.d = arr.shape[1]
    cfg = sae_cfg_for("topk", a)
    hp = hparams_for(cfg, a)
    n_batches = a.study_steps + 1
    xs = [jnp.asarray(arr[i * a.batch:(i + 1) * a.batch]) for i in range(n_batches)]
    # Realistic pre-activations: a partly trained SAE's (20 steps) on a fresh batch.
    step_fn = sae_train.compile_step(cfg)
    st = sae_step.init_state(cfg, jax.random.key(a.seed))
    for i in range(20):
        st, _ = step_fn(st, jnp.asarray(arr[(i + 8) * a.batch:(i + 9) * a.batch]), hp)
    z_BF = jax.jit(sae_model.preacts_pre_bias)(st["params"], xs[0])
    g_BF = jnp.asarray(np.random.default_rng(1).standard_normal(z_BF.shape, np.float32))
    w_FD = st["params"]["w_dec_FD"]
    alts = {
        "top_k+scatter (model.topk_activation)": sae_model.topk_activation,
        "approx_max_k+scatter": alt_approx_scatter,
        "threshold(top_k kth)+where": alt_threshold,
        "group16 prefilter+scatter": alt_group_scatter(16),
        "group32 prefilter+scatter": alt_group_scatter(32),
        "bisect32 threshold+where": alt_bisect,
    }
    ref = np.asarray(jax.jit(lambda z: sae_model.topk_activation(z, a.k))(z_BF))
    out = {"shape": {"B": a.batch, "F": a.d_sae, "d": a.d, "k": a.k}, "encode_only": {},
           "full_step": {}}
    enc_fns = {}
    for name, fn in alts.items():
        fwd = jax.jit(lambda z, fn=fn: fn(z, a.k))
        got = np.asarray(fwd(z_BF))
        nz = (got != 0).sum(1)
        out["encode_only"][name] = {
            "exact": bool(np.array_equal(got, ref)),
            "recall": float(((got != 0) & (ref != 0)).sum() / max((ref != 0).sum(), 1)),
            "nnz_per_row_min": int(nz.min()), "nnz_per_row_max": int(nz.max()),
            "fwd_ms": [], "fwd_vjp_ms": [], "fwd_decode_vjp_ms": []}
        vjp = jax.jit(lambda z, g, fn=fn: jax.vjp(lambda q: fn(q, a.k), z)[1](g)[0])
        # encode + dense decode + VJP wrt (z, W_dec): what the loss does with the activation
        dec = jax.jit(lambda z, w, fn=fn: jax.grad(
            lambda q, w: jnp.sum(jnp.square(fn(q, a.k) @ w)), argnums=(0, 1))(z, w))
        enc_fns[name] = (fwd, vjp, dec)
    # the sparse decode's encode + decode + VJP, for the same comparison
    def sparse_dec(z, w):
        def f(q, w):
            vals, idx = jax.lax.top_k(q, a.k)
            xh = jnp.einsum("bk,bkd->bd", jax.nn.relu(vals), w[idx])
            return jnp.sum(jnp.square(xh))
        return jax.grad(f, argnums=(0, 1))(z, w)
    sparse_dec = jax.jit(sparse_dec)
    out["encode_only"]["sparse decode (gather k rows)"] = {"fwd_decode_vjp_ms": []}
    for _r in range(a.study_rounds):
        for name, (fwd, vjp, dec) in enc_fns.items():
            rec = out["encode_only"][name]
            rec["fwd_ms"].append(1e3 * timed(fwd, z_BF, reps=1)[0])
            rec["fwd_vjp_ms"].append(1e3 * timed(vjp, z_BF, g_BF, reps=1)[0])
            rec["fwd_decode_vjp_ms"].append(1e3 * timed(dec, z_BF, w_FD, reps=1)[0])
        out["encode_only"]["sparse decode (gather k rows)"]["fwd_decode_vjp_ms"].append(
            1e3 * timed(sparse_dec, z_BF, w_FD, reps=1)[0])
    for rec in out["encode_only"].values():
        for key in ("fwd_ms", "fwd_vjp_ms", "fwd_decode_vjp_ms"):
            if key in rec:
                rec[key] = {"median": med(rec[key]), "all": [round(v, 1) for v in rec[key]]}
    log(json.dumps(out["encode_only"], indent=1))

    # full train step, each alternative compiled once, rounds alternate the order
    step_alts = {k: v for k, v in alts.items() if not k.startswith("bisect")}
    compiled = {}
    for name, fn in step_alts.items():  # each in the former dense-decode loss
        with patched([(sae_model, "topk_activation", fn),
                      (sae_losses.LOSSES, "topk", loss_topk_dense_decode)]):
            compiled[name] = jax.jit(functools.partial(sae_step.train_step, cfg=cfg),
                                     donate_argnums=0).lower(st, xs[0], hp).compile()
    compiled["project loss: sparse decode (gather k rows)"] = jax.jit(
        functools.partial(sae_step.train_step, cfg=cfg), donate_argnums=0
    ).lower(st, xs[0], hp).compile()
    names = list(compiled)
    timings, ends = time_steps(a, cfg, compiled, xs, hp)
    finals = {n: (np.asarray(st_["params"]["w_enc_DF"]), float(m["loss"]))
              for n, (st_, m) in ends.items()}
    base = "top_k+scatter (model.topk_activation)"
    for name in names:
        t = timings[name]
        out["full_step"][name] = {
            "wall_ms_median": med(t["wall_ms"]), "cpu_ms_median": med(t["cpu_ms"]),
            "wall_ms_all": [round(v) for v in t["wall_ms"]],
            "speedup_vs_original_wall": med(timings[base]["wall_ms"]) / med(t["wall_ms"]),
            "speedup_vs_original_cpu": med(timings[base]["cpu_ms"]) / med(t["cpu_ms"]),
            "max_abs_diff_w_enc_after_steps": float(np.abs(finals[name][0]
                                                           - finals[base][0]).max()),
            "final_loss": finals[name][1]}
    out["note"] = ("full_step: our train step with the alternative patched in, "
                   f"{a.study_steps} steps per round, {a.study_rounds} rounds; wall and CPU "
                   "ms per step (CPU time: this process, less sensitive to the machine's load)")
    return out


# ----------------------------------------------------------------------------- L1 study


def _cheap_metrics(x_BD, xhat_BD, f_BF):
    del xhat_BD, f_BF
    z = jnp.zeros((), jnp.float32) + 0.0 * x_BD[0, 0]
    return {k: z for k in ("mse", "nmse", "explained_variance", "l0", "l1")}


def _adam_only():
    return optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)


def study_l1(a) -> dict:
    """The anthropic_2024 step as is and with parts removed (monkeypatched), same inputs."""
    arr = np.load(a.acts, mmap_mode="r")
    a.d = arr.shape[1]
    cfg = sae_cfg_for("anthropic_2024", a)
    hp = hparams_for(cfg, a)
    n_batches = a.study_steps + 1
    xs = [jnp.asarray(arr[i * a.batch:(i + 1) * a.batch]) for i in range(n_batches)]
    no_metrics = (sae_model, "batch_metrics", _cheap_metrics)
    no_clip = (sae_step, "make_optimizer", _adam_only)
    patches = {
        "step as is": [],
        "no batch_metrics ([B,F] l0/l1 reductions)": [no_metrics],
        "no grad clip (Adam only)": [no_clip],
        "neither": [no_metrics, no_clip],
    }
    compiled = {}
    for name, patch in patches.items():
        with patched(patch):
            st = sae_step.init_state(cfg, jax.random.key(a.seed))
            compiled[name] = jax.jit(functools.partial(sae_step.train_step, cfg=cfg),
                                     donate_argnums=0).lower(st, xs[0], hp).compile()
    names = list(compiled)
    peaks = []
    t, _ = time_steps(a, cfg, compiled, xs, hp, patches,
                      before_round=lambda: peaks.append(matmul_rates(a, a.peak_reps)))
    flops = 10.0 * a.batch * a.d * a.d_sae
    out = {"steps_per_round": a.study_steps, "rounds": a.study_rounds, "variants": {}}
    for name in names:
        fr = [flops / (w / 1e3) / 1e9 / p["peak_gflops"]
              for w, p in zip(t[name]["wall_ms"], peaks, strict=True)]
        fc = [flops / (c / 1e3) / 1e9 / p["peak_gflop_per_cpu_s"]
              for c, p in zip(t[name]["cpu_ms"], peaks, strict=True)]
        out["variants"][name] = {
            "wall_ms_median": med(t[name]["wall_ms"]), "cpu_ms_median": med(t[name]["cpu_ms"]),
            "fraction_of_peak": med(fr), "fraction_of_peak_cpu_time": med(fc)}
    out["gemm_bound_ms_median"] = med([p["sae_gemm_bound_ms"] for p in peaks])
    out["gemm_rates_per_round"] = peaks
    return out


# ----------------------------------------------------------------------------- entry


def main(argv=None) -> None:
    a = parse_args(argv)
    if not a.no_malloc_tuning and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        # glibc reads these at start-up: re-exec with them (the peer inherits them).
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    a.cpu_list = sorted(int(c) for c in a.cpus.split(","))
    os.sched_setaffinity(0, a.cpu_list)  # before XLA's CPU client sizes its thread pools
    ensure_acts(a)
    if a.study_topk:
        a.d = np.load(a.acts, mmap_mode="r").shape[1]
        res = {"study": "topk_encode_alternatives", "backend": jax.default_backend(),
               **study_topk(a)}
    elif a.study_l1:
        res = {"study": "l1_step_breakdown", "backend": jax.default_backend(), **study_l1(a)}
    else:
        res = bench(a)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
