"""SAE scaling laws: how do loss, the compute-optimal dictionary size, steps and learning rate
scale with compute? (Scaling Monosemanticity, "Scaling laws"; issue 16.)

On a finished pipeline's store (W/acts), the paper's SAE (anthropic_2024, its L1 weighted by
decoder norms, fixed λ = the variant's default) is trained over an IsoFLOP grid: compute
C = 6·B·d·F·S FLOPs (the dense step; B rows per step, d the hook's width, F = d_sae, S steps),
levels spaced --level_ratio apart, each with splits that double F as they halve S around the
level's predicted optimum. Every (F, S) is one compiled program whose members are learning rates
(sae/loop.py train_members; the step compiles once per width: lr and total_steps are traced, and
the grid's programs of one width share it). Per member: the held-out loss (MSE + λ·L1, the
training objective) and normalised MSE. Levels run in order: a level's centre (F and lr) is
extrapolated from the levels before it, a level whose best split lies at an end gets more splits
beyond it, and a split at or beside the level's best whose best lr lies at an end of its ladder
gets a second program of learning rates past that end (√2 apart), so frontier points are
bracketed minima. Fits: experiments/_scaling_fit.py. Also measured: one program holding widths
F/2 and F (the narrower member masked) against two separate programs (--mask_bench); the grid
uses separate programs (faster on CPU, and an IsoFLOP level's widths differ in S as well).

  python experiments/scaling_laws.py --workdir=W            # full grid, <= 30 min on 2 cores
  python experiments/scaling_laws.py --workdir=W --smoke    # tiny grid (a test runs it)
  python experiments/scaling_laws.py --workdir=W --plan_only  # the probe and the plan only

Writes --out (default W/scaling_laws): runs/<program>/result.json (a finished program is skipped
on a rerun), scaling_laws.json, loss_vs_compute.png, isoflop.png, optimal_shape.png and
lr_vs_compute.png; the last stdout line is the JSON. Nothing is written to W/sae.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for path in (REPO, HERE):  # run as `python experiments/scaling_laws.py` from anywhere
    if path not in sys.path:
        sys.path.insert(0, path)

import _scaling_fit as fit  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from monosem_jax import batching, metrics_io, parallel  # noqa: E402
from monosem_jax.configs.sae import default as sae_default  # noqa: E402
from monosem_jax.sae import loop, losses  # noqa: E402
from monosem_jax.sae import model as sae_model  # noqa: E402
from monosem_jax.sae import run as sae_run  # noqa: E402
from monosem_jax.sae import step as sae_step  # noqa: E402

VARIANT = "anthropic_2024"
MEMBER_KEYS = ("lrs", "loss", "mse", "l1", "nmse", "l0")  # a run's lists, one entry a member


@dataclasses.dataclass(frozen=True)
class Settings:
    batch_size: int  # B, rows per step
    levels: int  # compute levels
    level_ratio: float  # compute ratio between levels
    splits: int  # (F, S) splits per level, F doubling as S halves
    p0: int  # F·S of level 0 (its compute is 6·B·d·p0)
    f0: int  # level 0's centre width
    lrs: int  # learning rates per program (the members), 2x apart
    lr0: float  # level 0's ladder centre
    f_min: int = 16  # narrowest dictionary
    s_min: int = 40  # fewest steps (λ warm-up and lr decay need some)
    extra_splits: int = 2  # splits a level may add where its minimum lies at an end
    f_exponent_guess: float = 0.5  # F* ∝ C^this until two levels are fitted
    lr_exponent_guess: float = -0.2  # lr* ∝ C^this until two levels are fitted
    shuffle_blocks: int = 8  # the reader's shuffle buffer in shards (its first read: all)
    eval_rows: int = 16384
    probe_steps: int = 10  # timed steps per width (and one compiling)
    mask_width: int = 2048  # width of the masking benchmark
    bootstrap: int = 1000
    budget_s: float = 1800.0


PRESETS = {
    # A pilot on the default store (d = 128): F* 228, 451, 822 and lr* 0.010, 0.008, 0.006 at
    # F·S = 25,600 x 1, 4, 16. Shuffle buffer: 2 of its 65,536-row shards (8 take 1.6 s to read
    # before a program's first step, 2 take 0.5 s).
    "full": Settings(batch_size=256, levels=5, level_ratio=4.0, splits=5, p0=12_800, f0=128,
                     lrs=4, lr0=0.011, f_min=16, s_min=40, shuffle_blocks=2),
    "smoke": Settings(batch_size=64, levels=4, level_ratio=4.0, splits=3, p0=640, f0=8,
                      lrs=3, lr0=8e-3, f_min=4, s_min=20, extra_splits=1, eval_rows=1024,
                      probe_steps=4, mask_width=64, bootstrap=100, budget_s=120.0),
}


def define_flags():
    flags.DEFINE_string("workdir", None, "A finished pipeline work dir (its W/acts store).")
    flags.DEFINE_string("out", "", "Results folder; '' = W/scaling_laws.")
    flags.DEFINE_bool("smoke", False, "The tiny grid (a test runs it).")
    flags.DEFINE_integer("levels", 0, "Compute levels (0 = the preset's).")
    flags.DEFINE_bool("mask_bench", True, "Time masked widths in one program vs separate ones.")
    flags.DEFINE_bool("plan_only", False, "Probe, print the plan (and --mask_bench), train none.")


# ----------------------------------------------------------------------------- one program


def train_config(s: Settings, d_sae: int, steps: int) -> sae_run.TrainConfig:
    config = sae_default.get_config()
    config.update(variant=VARIANT, name=f"scaling_F{d_sae}_S{steps}", d_sae=d_sae, steps=steps,
                  batch_size=s.batch_size, eval_rows=s.eval_rows, lr=s.lr0,
                  log_every=max(steps // 4, 1), checkpoint_every=steps,
                  shuffle_blocks=s.shuffle_blocks)
    return sae_run.TrainConfig.from_config(config)


@functools.partial(jax.jit, static_argnames="cfg")
def _heldout_sums(params, x_BD, valid_B, cfg):
    """Sums over one chunk's valid rows: squared error, ‖x‖², decoder-weighted L1, active."""
    x_BD = x_BD * valid_B[:, None]
    f_BF = sae_model.encode(cfg, params, x_BD) * valid_B[:, None]
    err_BD = x_BD - sae_model.decode(params, f_BF)
    return {"sse": jnp.sum(jnp.square(err_BD) * valid_B[:, None]), "sum_sq": jnp.sum(x_BD**2),
            "l1": losses.decoder_weighted_l1(f_BF, sae_model.decoder_norms(params)) * len(x_BD),
            "active": jnp.sum(f_BF > 0)}


def heldout(cfg, params, l1_coef: float, x_ND: np.ndarray, chunk: int = 4096) -> dict:
    """The training objective at its final λ (MSE + λ·L1) and nmse, L0 on held-out rows."""
    n, chunk = len(x_ND), min(chunk, len(x_ND))
    totals = None
    for start in range(0, n, chunk):
        x_BD, real = batching.pad_rows(np.asarray(x_ND[start : start + chunk], np.float32), chunk)
        sums = jax.device_get(_heldout_sums(params, x_BD, batching.valid_rows(real, chunk), cfg))
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    mse, l1 = float(totals["sse"]) / n, float(totals["l1"]) / n
    return {"loss": mse + l1_coef * l1, "mse": mse, "l1": l1,
            "nmse": float(totals["sse"]) / float(totals["sum_sq"]),
            "l0": float(totals["active"]) / n}


class Grid:
    """The grid's programs, each trained once (its result.json is kept), with one compiled step
    per width shared by all of them (`programs`)."""

    def __init__(self, s: Settings, workdir: str, out: str):
        self.s, self.workdir, self.out = s, workdir, out
        self.mesh = parallel.make_mesh(1)
        self.strategy = loop.resolve_strategy("auto")
        st = train_config(s, s.f0, s.s_min).training_store(workdir)
        self.d, self.rows = st.d, st.rows
        self.flops_per_fs = 6 * s.batch_size * self.d  # C = this · F · S
        self.programs: dict = {}
        self.results: dict = {}  # (F, S) -> the merged members of its programs
        self.trained, self.t_start = 0, time.time()

    def train(self, d_sae: int, steps: int, lrs: list[float], run_dir: str):
        """One program: its members' final states (sae/loop.py) and their specs."""
        cfg = train_config(self.s, d_sae, steps)
        specs = [sae_run.run_spec(cfg, self.workdir, self.d, name=f"{cfg.name}_lr{lr:.3g}", lr=lr)
                 for lr in lrs]  # the names: metrics.jsonl's members, TensorBoard's runs
        feed = loop.open_feed(cfg, self.workdir, self.mesh)
        trained = loop.train_members(cfg, feed, specs, out_dir=run_dir, strategy=self.strategy,
                                     resample_seed=cfg.seed, mesh=self.mesh,
                                     programs=self.programs)
        return trained, specs

    def run(self, d_sae: int, steps: int, lrs: list[float], note: str = "") -> dict:
        """The program's result (trained now, or read back from its result.json), merged into
        the record of its (F, S) with any other program of other learning rates there."""
        name = f"F{d_sae}_S{steps}_lr{lrs[0]:.3g}-{lrs[-1]:.3g}"
        run_dir = os.path.join(self.out, "runs", name)
        path = os.path.join(run_dir, "result.json")
        if os.path.exists(path):
            result = metrics_io.read_json(path)
        else:
            t0 = time.time()
            trained, specs = self.train(d_sae, steps, lrs, run_dir)
            l1_coef = float(jax.device_get(specs[0].device_hparams()["l1_coef"]))  # λ, shared
            members = [heldout(specs[0].sae_cfg, loop.member(trained.states, i)["params"],
                               l1_coef, trained.eval_ND) for i in range(len(specs))]
            result = {"d_sae": d_sae, "steps": steps, "batch_size": self.s.batch_size,
                      "d": self.d, "compute": float(self.flops_per_fs * d_sae * steps),
                      "lrs": list(lrs), "l1_coef": l1_coef,
                      **{k: [m[k] for m in members] for k in members[0]},
                      "train_loss": [float(v) for v in trained.train_loss_N],
                      "step_compilations": trained.step_compilations,
                      "tokens_per_s": trained.tokens_per_s, "wall_s": time.time() - t0}
            metrics_io.write_json_atomic(path, result)
            # The losses are the result; the states (up to ~100 MB a program) are not kept.
            shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
            self.trained += 1
            best = int(np.argmin(result["loss"]))
            logging.info("program %d %s %s: loss %.4f at lr %.3g (nmse %.4f) in %.1f s; "
                         "%.0f s so far", self.trained, name, note, result["loss"][best],
                         lrs[best], result["nmse"][best], result["wall_s"],
                         time.time() - self.t_start)
        merged = self.results.setdefault((d_sae, steps), {
            "d_sae": d_sae, "steps": steps, "compute": result["compute"], "programs": 0,
            **{key: [] for key in MEMBER_KEYS}})
        for key in MEMBER_KEYS:
            merged[key] = merged[key] + list(result[key])
        merged["programs"] += 1
        return merged

    def step_compilations(self) -> dict:
        """Traces of each width's shared step, over every program of that width."""
        return {str(key[0].d_sae): fn._cache_size() for key, fn in self.programs.items()}


# ----------------------------------------------------------------------------- the grid


def _round_log2(x: float, step: float = 1.0) -> float:
    return 2.0 ** (step * round(math.log2(x) / step))


def predicted(points: list[dict], key: str, compute: float, first: float, guess: float,
              clip: tuple[float, float]) -> float:
    """A level's centre for `key`: extrapolated from the frontier points before it (a power law
    once there are two, its exponent clipped; the guessed exponent from one), else `first`."""
    if not points:
        return first
    exponent = guess
    if len(points) >= 2:
        exponent = fit.power_law([p["compute"] for p in points], [p[key] for p in points])[
            "exponent"]
    exponent = float(np.clip(exponent, *clip))
    return points[-1][key] * (compute / points[-1]["compute"]) ** exponent


def level_splits(s: Settings, grid_p: float, centre: float, offsets) -> list[tuple[int, int]]:
    """(F, S) of the level's splits F = centre·2^j (j in offsets) within the limits."""
    out = []
    for j in offsets:
        d_sae = int(centre * 2.0**j)
        steps = int(round(grid_p / d_sae))
        if d_sae >= s.f_min and steps >= s.s_min:
            out.append((d_sae, steps))
    return out


def ladder(centre: float, n: int) -> list[float]:
    return [float(centre * 2.0 ** (i - (n - 1) / 2)) for i in range(n)]


def run_level(grid: Grid, i: int, points: list[dict]) -> list[dict]:
    """Trains level i (centred by the levels before it) and returns its runs (one merged record
    per split), extended until its best split has a split on each side (up to extra_splits)
    and the best split and its neighbours have their best learning rate inside their ladder."""
    s = grid.s
    p = s.p0 * s.level_ratio**i
    compute = grid.flops_per_fs * p
    centre = _round_log2(predicted(points, "d_sae", compute, s.f0, s.f_exponent_guess,
                                   (0.2, 0.9)))
    # lr* falls or stays with compute (longer runs): a rising extrapolation is noise.
    lrs = ladder(_round_log2(predicted(points, "lr", compute, s.lr0, s.lr_exponent_guess,
                                       (-1.0, 0.0)), 0.5), s.lrs)
    half = s.splits // 2
    runs = {fs: grid.run(*fs, lrs, f"(level {i})")
            for fs in level_splits(s, p, centre, range(-half, s.splits - half))}
    for extra in range(s.extra_splits + 1):
        ordered = sorted(runs)
        best = min(range(len(ordered)), key=lambda j: fit.run_optimum(runs[ordered[j]])["loss"])
        for fs in ordered[max(best - 1, 0) : best + 2]:
            opt = fit.run_optimum(runs[fs])
            if not opt["lr_interior"] and runs[fs]["programs"] == 1:
                # More lrs past the end, √2 apart: the optimum is most often just past it.
                sign = 1 if opt["lr"] >= max(runs[fs]["lrs"]) else -1
                more = sorted(opt["lr"] * 2.0 ** (sign * (k + 1) / 2) for k in range(s.lrs))
                runs[fs] = grid.run(*fs, more, f"(level {i}, more lrs)")
        ordered = sorted(runs)
        best = min(ordered, key=lambda fs: fit.run_optimum(runs[fs])["loss"])
        if extra == s.extra_splits or best not in (ordered[0], ordered[-1]):
            break
        new = level_splits(s, p, best[0], [1 if best == ordered[-1] else -1])
        if not new:  # past the width or step limits
            break
        runs[new[0]] = grid.run(*new[0], lrs, f"(level {i}, extra split)")
    return [runs[fs] for fs in sorted(runs)]


def probe(grid: Grid, widths: list[int]) -> dict:
    """Seconds per step of the grid's program (its lr members, the library's step on store
    rows) at the narrowest, a middle and the widest width, from a few timed steps after one
    that compiles (this jit is the probe's own: the loop's, shared by the grid, needs a feed)."""
    s = grid.s
    st = train_config(s, s.f0, s.s_min).training_store(grid.workdir)
    x_BD = jnp.asarray(st.read_rows(0, s.batch_size) * st.norm_scale)
    out = {}
    for d_sae in sorted({widths[0], widths[len(widths) // 2], widths[-1]}):
        specs = [sae_run.run_spec(train_config(s, d_sae, 100), "", grid.d, lr=lr)
                 for lr in ladder(s.lr0, s.lrs)]
        fn = loop.compile_step(specs[0].sae_cfg, strategy=grid.strategy, num_members=s.lrs)
        init = jax.device_get(sae_step.init_state(specs[0].sae_cfg, jax.random.key(0)))
        states = loop.stack([init] * s.lrs)
        hps = loop.stack([jax.device_get(spec.device_hparams()) for spec in specs])
        seconds = []
        for _ in range(s.probe_steps + 1):
            t0 = time.perf_counter()
            _, states, metrics = fn((), states, x_BD, hps)
            jax.block_until_ready(metrics)
            seconds.append(time.perf_counter() - t0)
        out[d_sae] = {"step_s": float(np.median(seconds[1:])),
                      "compile_s": seconds[0] - float(np.median(seconds[1:]))}
        logging.info("probe F=%d: %.2f ms/step (%d members), compile %.1f s", d_sae,
                     1e3 * out[d_sae]["step_s"], s.lrs, out[d_sae]["compile_s"])
    return out


def step_seconds(probed: dict, d_sae: int) -> float:
    """The probe's step time at any width: log-log interpolation between the probed ones."""
    widths = sorted(probed)
    return float(np.exp(np.interp(np.log(d_sae), np.log(widths),
                                  np.log([probed[f]["step_s"] for f in widths]))))


def plan(grid: Grid, probed: dict | None = None) -> dict:
    """The grid as predicted before training (the level centres at their guesses), its nominal
    FLOPs and, given the probe, its time (plus ~2 s a program for its feed, checkpoint, eval)."""
    s, programs, flops, seconds = grid.s, [], 0.0, 0.0
    for i in range(s.levels):
        p = s.p0 * s.level_ratio**i
        centre = _round_log2(s.f0 * s.level_ratio ** (i * s.f_exponent_guess))
        half = s.splits // 2
        for d_sae, steps in level_splits(s, p, centre, range(-half, s.splits - half)):
            programs.append([d_sae, steps])
            flops += s.lrs * grid.flops_per_fs * d_sae * steps
            if probed:
                seconds += steps * step_seconds(probed, d_sae) + 2.0
    return {"programs": programs, "members": s.lrs * len(programs), "flops": flops,
            "estimated_s": seconds, "widths": sorted({f for f, _ in programs})}


def masking_benchmark(grid: Grid, width: int) -> dict:
    """Seconds per step of one program holding widths F/2 and F (latents past a member's width
    masked; its width rides in the traced hp k, which anthropic_2024 does not read) against the
    library's separate single-width programs of F/2 and F."""
    s = grid.s
    x_BD = jnp.asarray(np.random.default_rng(0).standard_normal((s.batch_size, grid.d)),
                       jnp.float32)

    def masked_loss(params, x_BD, hp, dead_F, cfg):
        del dead_F
        f_BF = jax.nn.relu(sae_model.preacts(params, x_BD)) * (jnp.arange(cfg.d_sae) < hp["k"])
        xhat_BD = sae_model.decode(params, f_BF)
        l1 = losses.decoder_weighted_l1(f_BF, sae_model.decoder_norms(params))
        loss = losses.reconstruction_mse(x_BD, xhat_BD) + hp["l1_coef"] * l1
        return loss, {"f_BF": f_BF, "xhat_BD": xhat_BD}

    def timed(fn, state, hps):
        steps = max(s.probe_steps, 2)
        state, _ = fn(state, x_BD, hps)  # compiles
        t0 = time.perf_counter()
        for _ in range(steps):
            state, metrics = fn(state, x_BD, hps)
        jax.block_until_ready(metrics)
        return (time.perf_counter() - t0) / steps

    cfg = sae_model.SAEConfig(variant=VARIANT, d=grid.d, d_sae=width, k=width)
    step = functools.partial(sae_step.train_step, cfg=cfg, loss=masked_loss)
    both = jax.jit(lambda st, x, hp: jax.lax.map(lambda m: step(m[0], x, m[1]), (st, hp)))
    hps = loop.stack([jax.device_get(sae_step.default_hparams(cfg, k=w, lr=1e-3))
                      for w in (width // 2, width)])
    init = jax.device_get(sae_step.init_state(cfg, jax.random.key(0)))
    masked_s = timed(both, loop.stack([init, init]), hps)
    separate_s = 0.0
    for w in (width // 2, width):
        c = dataclasses.replace(cfg, d_sae=w, k=1)
        separate_s += timed(jax.jit(functools.partial(sae_step.train_step, cfg=c)),
                            sae_step.init_state(c, jax.random.key(0)),
                            sae_step.default_hparams(c, lr=1e-3))
    return {"width": width, "masked_program_s": masked_s, "separate_programs_s": separate_s,
            "masked_over_separate": masked_s / separate_s,
            "faster": "separate" if masked_s >= separate_s else "masked", "grid_uses": "separate"}


# ----------------------------------------------------------------------------- the experiment


def run(s: Settings, workdir: str, out: str, mask_bench: bool = True,
        plan_only: bool = False) -> dict:
    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    grid = Grid(s, workdir, out)
    the_plan = plan(grid)
    probed = probe(grid, the_plan["widths"])
    the_plan = plan(grid, probed)
    logging.info("plan: %d programs (%d members) over widths %s, %.3g FLOPs, ~%.0f s "
                 "(budget %.0f s), store %d rows x d=%d", len(the_plan["programs"]),
                 the_plan["members"], the_plan["widths"], the_plan["flops"],
                 the_plan["estimated_s"], s.budget_s, grid.rows, grid.d)
    if the_plan["estimated_s"] > s.budget_s:
        logging.warning("the plan's estimate exceeds the budget of %.0f s", s.budget_s)
    masking = masking_benchmark(grid, s.mask_width) if mask_bench else None
    if plan_only:
        return {"settings": dataclasses.asdict(s), "d": grid.d, "probe": {
            str(k): v for k, v in probed.items()}, "plan": the_plan, "masking": masking,
            "wall_s": time.time() - t0}
    levels, points = [], []
    for i in range(s.levels):
        levels.append(run_level(grid, i, points))
        points = fit.frontier(levels)
    fits = fit.fit_frontier(points)
    spread = fit.bootstrap(levels, samples=s.bootstrap)
    compilations = grid.step_compilations()
    summary = {
        "settings": dataclasses.asdict(s), "workdir": workdir, "d": grid.d,
        "store_rows": grid.rows, "strategy": grid.strategy, "probe": {
            str(k): v for k, v in probed.items()}, "plan": the_plan, "masking": masking,
        "levels": [[{k: r[k] for k in ("d_sae", "steps", "compute", *MEMBER_KEYS)}
                    for r in runs] for runs in levels],
        "frontier": points, "fits": fits, "bootstrap": spread,
        "exponents": {k: {"exponent": fits[k]["exponent"], "se": fits[k]["exponent_se"],
                          "r2": fits[k]["r2"], "bootstrap_std": spread[k]["std"],
                          "q05": spread[k]["q05"], "q95": spread[k]["q95"]} for k in fits},
        "step_compilations_per_width": compilations,
        "programs_trained": grid.trained, "programs": sum(r["programs"] for runs in levels
                                                          for r in runs),
        "acceptance": {
            "loss_r2": fits["loss"]["r2"], "loss_decades": fits["loss"]["decades"],
            "loss_power_law_ok": fits["loss"]["r2"] >= 0.95 and fits["loss"]["decades"] >= 2,
            "lr_levels": fits["lr"]["points"], "lr_power_law_ok": fits["lr"]["points"] >= 4,
            "frontier_interior": sum(p["f_interior"] for p in points),
            "frontier_lr_interior": sum(p["best_split_lr_interior"] for p in points),
            "compiled_once_per_width": all(n == 1 for n in compilations.values())},
    }
    fit.plots(out, levels, points, fits, spread)
    summary["wall_s"] = time.time() - t0
    metrics_io.write_json_atomic(os.path.join(out, "scaling_laws.json"), summary)
    return summary


def main(argv):
    del argv
    s = PRESETS["smoke" if FLAGS.smoke else "full"]
    if FLAGS.levels:
        s = dataclasses.replace(s, levels=FLAGS.levels)
    workdir = FLAGS.workdir
    out = FLAGS.out or os.path.join(workdir, "scaling_laws")
    summary = run(s, workdir, out, mask_bench=FLAGS.mask_bench, plan_only=FLAGS.plan_only)
    print(json.dumps(summary), flush=True)


FLAGS = flags.FLAGS

if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("workdir")
    app.run(main)
