"""Sweeps: N SAE configurations of one shape trained in one compiled program on shared batches.

Members differ only in traced values (hyper-parameters stacked on a leading axis with explicit
dtypes, and the init seed), so the program compiles once. Every batch is read once and fed to
all members. How the members share the program is a strategy, because the fastest differs by
backend (see experiments/bench_sweep.py):

  vmap  one batched program: batched matmuls [N, B, d] x [N, d, F] (best on GPU)
  map   lax.map over members: a compiled loop, one member's matmuls at a time
  loop  the members' steps unrolled in one program (XLA may overlap them)

At the end each member is written as an ordinary SAE run, `W/sae/<sweep>_<i>/` (checkpoint,
config, summary), plus `W/sweep/<sweep>/table.csv`, `frontier.png` and `summary.json`.
"""

from __future__ import annotations

import csv
import functools
import itertools
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from monosem_jax import checkpoint, metrics_io
from monosem_jax.activations import reader as reader_lib
from monosem_jax.sae import artifact as sae_artifact
from monosem_jax.sae import step as sae_step
from monosem_jax.sae import train as sae_train

GRID_KEYS = sae_train.HPARAM_FIELDS + ("seed",)
INT_KEYS = ("k", "k_start", "seed")
# experiments/bench_sweep.py on 2 CPU cores (8 members, d=128, F=2048, B=4096, 40 steps, the
# real store): wall time / 8 single runs = vmap 0.74, map 0.77, loop 1.08. GPUs: batched matmuls.
BEST_STRATEGY = {"cpu": "vmap", "gpu": "vmap", "tpu": "vmap"}


def parse_grid(grid: str) -> list[dict]:
    """'l1_coef=1,2 seed=0,1' -> the product as a list of override dicts (in order)."""
    axes = []
    for item in grid.split():
        key, _, values = item.partition("=")
        if key not in GRID_KEYS or not values:
            raise ValueError(
                f"bad sweep axis {item!r}: use key=v1,v2,... with key in {', '.join(GRID_KEYS)}"
            )
        cast = int if key in INT_KEYS else float
        try:
            axes.append([(key, cast(v)) for v in values.split(",")])
        except ValueError:
            raise ValueError(f"bad value in sweep axis {item!r}") from None
    if not axes:
        raise ValueError("sweep.grid is empty; give at least one axis like 'l1_coef=1,2,4'")
    return [dict(combo) for combo in itertools.product(*axes)]


def make_sweep_step(sae_cfg, strategy: str, num_members: int):
    """The (unjitted) step of all members: (states, x_BD, hps) -> (states, metrics)."""
    step = functools.partial(sae_step.train_step, cfg=sae_cfg)
    if strategy == "vmap":
        return lambda states, x_BD, hps: jax.vmap(step, in_axes=(0, None, 0))(states, x_BD, hps)
    if strategy == "map":
        return lambda states, x_BD, hps: jax.lax.map(
            lambda member: step(member[0], x_BD, member[1]), (states, hps)
        )
    if strategy == "loop":

        def unrolled(states, x_BD, hps):
            outs = [
                step(
                    jax.tree.map(lambda a, i=i: a[i], states),
                    x_BD,
                    jax.tree.map(lambda a, i=i: a[i], hps),
                )
                for i in range(num_members)
            ]
            return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *outs)

        return unrolled
    raise ValueError(f"sweep.strategy must be auto, vmap, map or loop, got {strategy!r}")


def resolve_strategy(strategy: str) -> str:
    return BEST_STRATEGY.get(jax.default_backend(), "vmap") if strategy == "auto" else strategy


def stack(trees):
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def sweep(config: ml_collections.ConfigDict, workdir: str, *, wrap_step=None) -> dict:
    """Trains every member of `config.sweep.grid`; `wrap_step` lets tests count traces."""
    t_start = time.time()
    st = sae_artifact.training_store(config, workdir)
    members = parse_grid(config.sweep.grid)
    name = config.sweep.name
    sweep_dir = os.path.join(workdir, "sweep", name)
    summary_path = os.path.join(sweep_dir, "summary.json")
    if os.path.exists(summary_path):
        logging.info("sweep %s already finished; nothing to do", name)
        return metrics_io.finish_summary(summary_path, metrics_io.read_json(summary_path))
    specs = [
        sae_train.run_spec(config, workdir, st.d, name=f"{name}_{i}", **m)
        for i, m in enumerate(members)
    ]
    # One static shape for all: TopK selects up to the largest k; each member's traced k masks.
    sae_cfg = max((s.sae_cfg for s in specs), key=lambda c: c.k)
    specs = [s.__class__(**{**s.__dict__, "sae_cfg": sae_cfg}) for s in specs]
    strategy = resolve_strategy(config.sweep.strategy)
    logging.info("sweep %s: %d members, strategy %s", name, len(specs), strategy)

    # All members read the same batches: the sweep's data seed, whatever their init seeds.
    data_seed = config.data_seed if config.data_seed >= 0 else config.seed
    reader = reader_lib.ActivationReader(st, sae_train._reader_config(config, data_seed))
    eval_ND = reader.eval_rows_array()
    hps = stack([jax.device_get(sae_train.device_hparams(s)) for s in specs])
    states = stack(
        [jax.device_get(sae_step.init_state(sae_cfg, jax.random.key(s.seed))) for s in specs]
    )
    ckpt = checkpoint.Checkpointer(
        os.path.join(sweep_dir, "checkpoints"), save_every=config.checkpoint_every
    )
    restored = ckpt.restore(checkpoint.abstract_like(states))
    if restored is not None:
        states = restored[0]
        logging.info("resuming sweep %s from step %d", name, int(states["step"][0]))
    start = int(np.asarray(states["step"])[0])
    step_fn = make_sweep_step(sae_cfg, strategy, len(specs))
    step_fn = jax.jit(wrap_step(step_fn) if wrap_step else step_fn, donate_argnums=0)
    resample_fn = jax.jit(
        jax.vmap(functools.partial(sae_step.resample_dead, cfg=sae_cfg), in_axes=(0, None, 0, 0))
    )
    writer = metrics_io.MetricsWriter(os.path.join(sweep_dir, "metrics.jsonl"), start)

    def report(step, metrics, steps_per_s, eta):
        _log_members(step, metrics, specs, config, writer, steps_per_s, eta)

    lagged = metrics_io.LaggedMetrics(config.steps, report)
    batches = reader.iterate(start, device_put=True)
    try:
        for step in range(start, config.steps):
            x_BD = next(batches)
            if step in specs[0].resample_steps and sae_cfg.variant == "towards_2023":
                keys = jax.random.split(
                    jax.random.fold_in(jax.random.key(config.seed), step), len(specs)
                )
                states = resample_fn(states, x_BD, keys, hps)
            states, metrics = step_fn(states, x_BD, hps)
            lagged.dispatched(step, metrics)
            done = step + 1
            if done % config.checkpoint_every == 0 or done == config.steps:
                _check_members(specs, step, jax.device_get(metrics))
                ckpt.save(done, states, {"step": done, "members": len(specs)}, force=True)
        lagged.flush()
    finally:
        batches.close()
        ckpt.close()
        reader.close()
    rate = lagged.timed_steps / lagged.elapsed if lagged.elapsed else 0.0
    tokens_per_s = rate * config.batch_size

    rows = []
    for i, spec in enumerate(specs):
        member = jax.tree.map(lambda a, i=i: a[i], states)
        sae_train.record_config(spec, config, st.norm_scale)
        member_ckpt = checkpoint.Checkpointer(
            os.path.join(spec.run_dir, "checkpoints"), save_every=config.checkpoint_every
        )
        member_ckpt.save(
            config.steps,
            member,
            {"step": config.steps, "name": spec.name, "sweep": name},
            force=True,
        )
        member_ckpt.close()
        stats = {
            "resumed_from_step": start,
            "tokens_per_s": tokens_per_s,
            "train_loss": float(np.asarray(metrics["loss"])[i]),
        }
        hp_i = jax.tree.map(lambda a, i=i: a[i], hps)
        rows.append(
            {
                **members[i],
                **sae_train.finish_run(spec, member["params"], hp_i, eval_ND, stats, t_start),
            }
        )
    _write_table(sweep_dir, rows, members)
    summary = {
        "name": name,
        "members": len(specs),
        "strategy": strategy,
        "steps": config.steps,
        "tokens_per_s": tokens_per_s,
        "member_tokens_per_s": tokens_per_s * len(specs),
        "best_explained_variance": max(r["explained_variance"] for r in rows),
        "wall_s": time.time() - t_start,
    }
    return metrics_io.finish_summary(summary_path, summary)


def _check_members(specs, step, metrics) -> None:
    for i, spec in enumerate(specs):
        sae_train.check_finite(spec.name, step, {"loss": np.asarray(metrics["loss"])[i]})


def _log_members(step, metrics, specs, config, writer, steps_per_s, eta) -> None:
    _check_members(specs, step, metrics)
    done = step + 1
    if done % config.log_every and done != config.steps:
        return
    ev = np.asarray(metrics["explained_variance"])
    l0 = np.asarray(metrics["l0"])
    logging.info(
        "sweep step %d/%d ev %.3f..%.3f l0 %.1f..%.1f | %.0f tok/s | eta %s",
        done,
        config.steps,
        ev.min(),
        ev.max(),
        l0.min(),
        l0.max(),
        steps_per_s * config.batch_size,
        eta,
    )
    for i, spec in enumerate(specs):
        writer.write(done, member=spec.name, **{k: np.asarray(v)[i] for k, v in metrics.items()})


def _write_table(sweep_dir: str, rows: list[dict], members: list[dict]) -> None:
    keys = list(members[0]) + [
        "name",
        "mse",
        "nmse",
        "explained_variance",
        "l0",
        "dead_fraction",
        "dense_fraction",
    ]
    with open(os.path.join(sweep_dir, "table.csv"), "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        out.writeheader()
        out.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    l0 = [r["l0"] for r in rows]
    ev = [r["explained_variance"] for r in rows]
    ax.scatter(l0, ev)
    for r in rows:
        ax.annotate(r["name"].rsplit("_", 1)[-1], (r["l0"], r["explained_variance"]), fontsize=7)
    ax.set_xlabel("L0 (mean active features)")
    ax.set_ylabel("explained variance (held out)")
    ax.set_title(os.path.basename(sweep_dir))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(sweep_dir, "frontier.png"), dpi=120)
    plt.close(fig)
