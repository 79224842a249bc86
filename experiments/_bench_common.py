"""Helpers shared by the SAE benchmark scripts (not a script itself).

Timing (CPU seconds, medians, alternating rounds of compiled steps), the float32 matmul rates a
step is compared with, the process set-up (cores, glibc malloc settings), the activation file
the benchmarks train on (given, read from an activation store, or generated from a known
dictionary) and the SAELens peer harness (../shared/bench next to the repository, when present).
Imported by bench_sae_vs_saelens.py, topk_select_study.py, l1_step_anatomy.py and, for the
known-dictionary generator, sae_ground_truth.py: `python experiments/<script>.py` puts this
folder on sys.path.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from typing import Callable, NamedTuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as `python experiments/<script>.py` from anywhere
    sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from monosem_jax.activations import store as store_lib  # noqa: E402
from monosem_jax.configs.sae import default as sae_default  # noqa: E402

# glibc: XLA allocates a step's temporaries (~200-300 MB at B = F = 4096) as one block per
# execution; glibc serves blocks that large with a fresh mmap, so every step page-faults all of
# it in again (~55k minor faults, ~0.1 CPU-s per step on the 2-core machine). One arena, no
# mmap and no trimming keep the block in the heap between steps. torch allocates its [B, F]
# tensors the same way, so the peer inherits the same settings.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
              "MALLOC_TRIM_THRESHOLD_": str(1 << 36), "MALLOC_TOP_PAD_": str(1 << 26)}
# The peer trainer (run in the peer's virtualenv): this folder's saelens_peer.py, the shared
# harness's ../shared/bench/peer_saelens.py loop plus jumprelu, autocast and peak memory.
PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "saelens_peer.py")


# ----------------------------------------------------------------------------- process


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def add_process_flags(ap) -> None:
    ap.add_argument("--cpus", default="",
                    help="comma list of cores for this process (and the peer); default: the "
                         "cores this process may use now")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="keep glibc's malloc defaults (see MALLOC_ENV)")


def add_step_study_flags(ap, smoke: dict) -> None:
    """The flags every single-step timing study shares (shape, timing rounds, seed, --smoke)."""
    add_acts_flags(ap)
    add_process_flags(ap)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per round and contender")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help=f"tiny sizes: {smoke}")


def setup_process(args) -> list[int]:
    """Re-executes with MALLOC_ENV unless disabled (glibc reads it at start-up), then pins this
    process to --cpus before XLA's CPU client sizes its thread pools; returns the cores."""
    if not args.no_malloc_tuning and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    if args.cpus:
        cpus = sorted(int(c) for c in args.cpus.split(",") if c.strip())
        os.sched_setaffinity(0, cpus)
    else:
        cpus = sorted(os.sched_getaffinity(0))
    return cpus


def malloc_env(args) -> dict:
    return {} if args.no_malloc_tuning else dict(MALLOC_ENV)


def parse_with_smoke(ap, argv, smoke_defaults: dict):
    """ap's arguments; with --smoke, smoke_defaults replace the defaults (flags still win)."""
    if ap.parse_args(argv).smoke:
        ap.set_defaults(**smoke_defaults)
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- timing


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def median(xs) -> float | None:
    xs = list(xs)
    return statistics.median(xs) if xs else None


def timed(fn, *args, reps: int = 3, warm: int = 1) -> tuple[float, float]:
    """Median wall seconds and CPU seconds (this process) of fn(*args), synchronised."""
    for _ in range(warm):
        jax.block_until_ready(fn(*args))
    walls, cpus = [], []
    for _ in range(reps):
        c, t = cpu_seconds(), time.perf_counter()
        jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - t)
        cpus.append(cpu_seconds() - c)
    return median(walls), median(cpus)


class Contender(NamedTuple):
    """One compiled train step to time: init() gives a fresh state for it, step(state, x, hp)."""

    init: Callable
    step: Callable


def time_steps(contenders: dict[str, Contender], xs: list, hp, rounds: int,
               before_round: Callable | None = None) -> tuple[dict, dict]:
    """Wall and CPU ms per step of each contender over `rounds` rounds (the order alternating,
    so drift in the machine's load hits every contender alike), each round from a fresh state:
    one untimed step on xs[0], then the timed steps on xs[1:]. Returns ({name: {"wall_ms": [..],
    "cpu_ms": [..]}}, {name: the last round's final (state, metrics)})."""
    names = list(contenders)
    timings = {n: {"wall_ms": [], "cpu_ms": []} for n in names}
    finals = {}
    steps = len(xs) - 1
    for r in range(rounds):
        if before_round is not None:
            before_round()
        for name in names if r % 2 == 0 else names[::-1]:
            init, step = contenders[name]
            state, metrics = step(init(), xs[0], hp)
            jax.block_until_ready(state)
            c0, t0 = cpu_seconds(), time.perf_counter()
            for x_BD in xs[1:]:
                state, metrics = step(state, x_BD, hp)
            jax.block_until_ready(state)
            timings[name]["wall_ms"].append(1e3 * (time.perf_counter() - t0) / steps)
            timings[name]["cpu_ms"].append(1e3 * (cpu_seconds() - c0) / steps)
            finals[name] = (state, metrics)
        log(f"round {r}: " + ", ".join(f"{n}: {timings[n]['wall_ms'][-1]:.0f} ms" for n in names))
    return timings, finals


def timing_summary(t: dict) -> dict:
    return {"wall_ms_median": median(t["wall_ms"]), "cpu_ms_median": median(t["cpu_ms"]),
            "wall_ms_all": [round(v, 1) for v in t["wall_ms"]],
            "cpu_ms_all": [round(v, 1) for v in t["cpu_ms"]]}


# ----------------------------------------------------------------------------- matmul rates


def sae_gemms(batch: int, d: int, d_sae: int) -> dict:
    """The five GEMMs of a dense SAE step, in the orientation XLA compiles them (dot_general
    contracting dims as in the step's HLO): name -> (fn, shape a, shape b)."""
    B, D, F = batch, d, d_sae
    return {
        "enc_fwd x@W_enc": (lambda x, w: x @ w, (B, D), (D, F)),
        "dec_fwd f@W_dec": (lambda f, w: f @ w, (B, F), (F, D)),
        "bwd_df g@W_dec^T": (lambda g, w: jnp.einsum("bd,fd->bf", g, w), (B, D), (F, D)),
        "bwd_dW_dec f^T@g": (lambda f, g: jnp.einsum("bf,bd->fd", f, g), (B, F), (B, D)),
        "bwd_dW_enc x^T@dz": (lambda x, dz: jnp.einsum("bd,bf->df", x, dz), (B, D), (B, F)),
    }


def matmul_rates(batch: int, d: int, d_sae: int, square: int = 4096, reps: int = 3) -> dict:
    """GFLOP/s (wall) and GFLOP per CPU-second of float32 matmuls, measured now, in-process:
    a square³ matmul (the peer harness's gemm_peak.py, jax backend) and the step's five GEMMs.
    sae_gemm_bound_ms: the five back to back at the rates just measured (a matmul-only bound);
    peak_*: the best rate of any of them."""
    rng = np.random.default_rng(0)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s, dtype=np.float32))  # noqa: E731
    dots = {f"square_{square}": (lambda x, y: x @ y, (square, square), (square, square))}
    dots.update(sae_gemms(batch, d, d_sae))
    out = {}
    for name, (fn, sa, sb) in dots.items():
        flops = 2.0 * square**3 if name.startswith("square") else 2.0 * batch * d * d_sae
        wall, cpu = timed(jax.jit(fn), arr(*sa), arr(*sb), reps=reps, warm=1)
        out[name] = {"gflops": flops / wall / 1e9, "gflop_per_cpu_s": flops / cpu / 1e9,
                     "ms": 1e3 * wall}
    gemms = [n for n in dots if not n.startswith("square")]
    out["sae_gemm_bound_ms"] = sum(out[n]["ms"] for n in gemms)
    out["peak_gflops"] = max(out[n]["gflops"] for n in dots)
    out["peak_gflop_per_cpu_s"] = max(out[n]["gflop_per_cpu_s"] for n in dots)
    return out


# ----------------------------------------------------------------------------- activations
# The known-dictionary activations of the peer harness's make_acts.py (its description, with
# one change, below): x = sum_{j in S} m_j f_j + sigma eps with n_feat random unit directions
# f_i, |S| ~ Uniform{k_min..k_max}, S drawn without replacement with Zipf-like firing weights
# p_i ∝ (i + 1)^(-zipf) (shuffled so the index carries no frequency), m_j ~ Exponential(1) * s_i
# with per-feature scales s_i ~ LogUniform[0.5, 2], and isotropic noise sigma per dimension.
# The change: make_acts.py samples S by Gumbel-top-k over all n_feat features and builds x with a
# dense [rows, n_feat] x [n_feat, d] GEMM; here S is the first |S| distinct draws of a
# with-replacement sequence ∝ p (the same successive-sampling distribution, ~30 uniforms per
# row) and x is a gather of |S| rows: 262k rows take seconds instead of a minute on 2 cores.

KNOWN_DICTIONARY = dict(rows=262_144, d=256, n_feat=2048, k_min=8, k_max=16, zipf=0.7,
                        noise=0.02, seed=0)


def true_dictionary(gen: dict):
    """(unit directions [n_feat, d], firing log-weights [n_feat], magnitude scales [n_feat],
    the generator's rng, ready to draw the rows)."""
    rng = np.random.default_rng(gen["seed"])
    feats = rng.standard_normal((gen["n_feat"], gen["d"])).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    logw = -gen["zipf"] * np.log(np.arange(1, gen["n_feat"] + 1, dtype=np.float64))
    logw = logw[rng.permutation(gen["n_feat"])]
    fscale = np.exp(rng.uniform(np.log(0.5), np.log(2.0), gen["n_feat"])).astype(np.float32)
    return feats, logw, fscale, rng


def _distinct_draws(rng, cdf: np.ndarray, rows: int, kmax: int) -> np.ndarray:
    """[rows, kmax] feature ids: each row's first kmax distinct draws of a sequence ∝ weights."""
    out = np.empty((rows, kmax), np.int64)
    todo = np.arange(rows)
    m = 2 * kmax
    while len(todo):
        draws = np.searchsorted(cdf, rng.random((len(todo), m)) * cdf[-1], side="right")
        draws = np.minimum(draws, len(cdf) - 1)
        earlier = np.tril(np.ones((m, m), bool), -1)  # [j, i]: i < j
        dup = ((draws[:, :, None] == draws[:, None, :]) & earlier[None]).any(axis=2)
        ok = (~dup).sum(axis=1) >= kmax  # else redraw the row (vanishingly rare)
        order = np.argsort(dup, axis=1, kind="stable")  # first occurrences first, in order
        firsts = np.take_along_axis(draws, order, axis=1)[:, :kmax]
        out[todo[ok]] = firsts[ok]
        todo = todo[~ok]
    return out


def generate_rows(gen: dict, feats, logw, fscale, rng, chunk: int = 8192):
    """Yields float32 [<=chunk, d] rows and the per-feature firing counts so far."""
    w = np.exp(logw - logw.max())
    cdf = np.cumsum(w)
    kmax = gen["k_max"]
    counts = np.zeros(gen["n_feat"], np.int64)
    for start in range(0, gen["rows"], chunk):
        b = min(chunk, gen["rows"] - start)
        idx = _distinct_draws(rng, cdf, b, kmax)  # [b, kmax]
        k = rng.integers(gen["k_min"], gen["k_max"] + 1, size=b)
        mask = np.arange(kmax)[None, :] < k[:, None]
        mag = rng.exponential(1.0, size=(b, kmax)).astype(np.float32)
        mag *= fscale[idx] * mask
        x = np.einsum("bk,bkd->bd", mag, feats[idx], optimize=True)
        x += gen["noise"] * rng.standard_normal((b, gen["d"]), dtype=np.float32)
        np.add.at(counts, idx[mask], 1)
        yield x.astype(np.float32), counts


def known_dictionary_rows(gen: dict) -> np.ndarray:
    feats, logw, fscale, rng = true_dictionary(gen)
    return np.concatenate([x for x, _ in generate_rows(gen, feats, logw, fscale, rng)])


def add_acts_flags(ap) -> None:
    ap.add_argument("--acts", default="",
                    help="a float32 [N, d] .npy to train on; default: --store's rows, else rows "
                         "generated from a known dictionary into a temporary folder")
    ap.add_argument("--store", default="",
                    help="an activation store root (e.g. W/acts): its first --rows rows of "
                         "--hook, times the store's norm_scale, as the trainer sees them")
    ap.add_argument("--hook", default=sae_default.get_config().hook,
                    help="the --store hook (default: the SAE config's)")
    ap.add_argument("--rows", type=int, default=KNOWN_DICTIONARY["rows"],
                    help="rows read from --store or generated")
    ap.add_argument("--acts-d", type=int, default=KNOWN_DICTIONARY["d"],
                    help="width of generated rows")
    ap.add_argument("--acts-seed", type=int, default=0, help="seed of generated rows")


def store_rows(root: str, hook: str, rows: int) -> np.ndarray:
    st = store_lib.open_store(store_lib.kvstore_for(root), hook)
    x_ND = st.read_rows(0, min(rows, st.rows)).astype(np.float32)
    return x_ND * np.float32(st.norm_scale)


def acts_file(args, tmp_dir: str) -> tuple[str, dict]:
    """The .npy the benchmark trains on and a description: --acts as given, else written into
    tmp_dir from --store or from the known-dictionary generator."""
    if args.acts:
        if not os.path.exists(args.acts):
            raise SystemExit(f"--acts {args.acts}: no such file")
        return args.acts, {"source": "file", "path": args.acts}
    if args.store:
        x_ND = store_rows(args.store, args.hook, args.rows)
        info = {"source": "store", "store": args.store, "hook": args.hook}
    else:
        n_feat = min(KNOWN_DICTIONARY["n_feat"], 8 * args.acts_d)
        gen = dict(KNOWN_DICTIONARY, rows=args.rows, d=args.acts_d, n_feat=n_feat,
                   seed=args.acts_seed)
        x_ND = known_dictionary_rows(gen)
        info = {"source": "known_dictionary", "generator": gen}
    path = os.path.join(tmp_dir, "acts.npy")
    np.save(path, x_ND)
    info.update(path=path, rows=int(x_ND.shape[0]), d=int(x_ND.shape[1]))
    log(f"activations: {json.dumps(info)}")
    return path, info


def load_acts(path: str) -> np.ndarray:
    x_ND = np.load(path)
    if x_ND.dtype != np.float32 or x_ND.ndim != 2:
        raise SystemExit(f"{path}: expected a float32 [N, d] array, got {x_ND.dtype} "
                         f"{x_ND.shape}")
    return x_ND


# ----------------------------------------------------------------------------- peer harness


def add_peer_flags(ap) -> None:
    ap.add_argument("--peer-python", default="",
                    help="python of a virtualenv with sae-lens and torch (../shared/bench/"
                         "README.md sets one up); without it the peer side is skipped")


def peer_unavailable(args) -> str | None:
    """Why the peer cannot run (a sentence), or None."""
    if not args.peer_python:
        return "no --peer-python given"
    if not os.path.exists(args.peer_python):
        return f"--peer-python {args.peer_python} does not exist"
    return None


def run_peer(args, peer_args: list[str], cpus: list[int]) -> dict:
    """Runs saelens_peer.py with peer_args on `cpus`; its last stdout line (JSON) plus the
    process's CPU seconds, CPU share, load and command."""
    cmd = [args.peer_python, PEER_SCRIPT, *peer_args]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", ",".join(map(str, cpus)), *cmd]
    load0 = os.getloadavg()[0]
    c0, t0 = child_cpu_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, child_cpu_seconds() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"peer failed ({proc.returncode}): {' '.join(cmd)}\n"
                           f"{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    # Whole process (imports, data, fit, eval): only a rough view of how contended it ran.
    res.update(process_cpu_s=cpu, process_cpu_share=cpu / wall / len(cpus), loadavg_1m=load0,
               command=" ".join(cmd))
    return res
