"""Sweeps: N SAE configurations of one shape trained in one compiled program on shared batches.

Members differ only in traced values (hyper-parameters stacked on a leading axis with explicit
dtypes, and the init seed), so the program compiles once; the loop is sae/loop.py's, as for a
single run. At the end each member is written as an ordinary SAE run, `W/sae/<sweep>_<i>/`
(checkpoint, config, summary), plus `W/sweep/<sweep>/table.csv`, `frontier.png` and
`summary.json`. Training metrics: `W/sweep/<sweep>/metrics.jsonl` (a row per member and logged
step, named by `member`) and TensorBoard's `W/sweep/<sweep>/tensorboard/<member>/`.
"""

from __future__ import annotations

import csv
import itertools
import os
import time

import ml_collections
from absl import logging

from monosem_jax import checkpoint, config_values, metrics_io, parallel, stage_config, workdir_lock
from monosem_jax.sae import loop
from monosem_jax.sae import run as sae_run
from monosem_jax.sae import step as sae_step

GRID_KEYS = sae_step.CONFIG_HPARAMS + ("seed",)
INT_KEYS = sae_step.INT_HPARAMS + ("seed",)


def parse_grid(grid) -> list[dict]:
    """'l1_coef=1,2 seed=0,1' (or a tuple of such axes) -> the product as override dicts."""
    items = grid.split() if isinstance(grid, str) else [a for g in grid for a in str(g).split()]
    axes = []
    for item in items:
        key, _, values = item.partition("=")
        if key not in GRID_KEYS or not values:
            raise ValueError(
                f"bad sweep axis {item!r}: use key=v1,v2,... with key in {', '.join(GRID_KEYS)}"
            )
        cast = config_values.int_tuple if key in INT_KEYS else config_values.float_tuple
        try:
            axes.append([(key, v) for v in cast(f"sweep.grid[{key}]", values)])
        except ValueError:
            raise ValueError(f"bad value in sweep axis {item!r}") from None
    if not axes:
        raise ValueError("sweep.grid is empty; give at least one axis like 'l1_coef=1,2,4'")
    return [dict(combo) for combo in itertools.product(*axes)]


@workdir_lock.writer(
    lambda config: f"sweep-{stage_config.path_component('sweep.name', config.sweep.name)}")
def sweep(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains every member of `config.sweep.grid` in one program and writes each as a run."""
    t_start = time.time()
    cfg = sae_run.TrainConfig.from_config(config)
    members = parse_grid(config.sweep.grid)
    strategy = loop.resolve_strategy(config.sweep.strategy)
    name = config.sweep.name
    sweep_dir = os.path.join(workdir, "sweep", name)
    summary_path = os.path.join(sweep_dir, "summary.json")
    if os.path.exists(summary_path):
        logging.info("sweep %s already finished; nothing to do", name)
        return metrics_io.finish_summary(summary_path, metrics_io.read_json(summary_path))
    mesh = parallel.make_mesh(cfg.model_parallel)
    # All members read the same batches: the sweep's data seed, whatever their init seeds.
    feed = loop.open_feed(cfg, workdir, mesh)
    try:
        specs = [sae_run.run_spec(cfg, workdir, feed.d, name=f"{name}_{i}", **m)
                 for i, m in enumerate(members)]
        for spec in specs:
            sae_run.record_config(spec, cfg, feed.norm_scale)
    except BaseException:
        feed.close()
        raise
    logging.info("sweep %s: %d members, strategy %s", name, len(specs), strategy)
    trained = loop.train_members(cfg, feed, specs, out_dir=sweep_dir, strategy=strategy,
                                 resample_seed=cfg.seed, mesh=mesh)
    rows = []
    for i, spec in enumerate(specs):
        # A sweep killed while writing its members left some finished (kept as they are: a
        # finished run is never rewritten) and maybe one saved but without summary (Orbax
        # refuses to save a step twice).
        member_summary = os.path.join(spec.run_dir, "summary.json")
        if os.path.exists(member_summary):
            rows.append({**members[i], **metrics_io.read_json(member_summary)})
            continue
        state = loop.member(trained.states, i)
        member_ckpt = checkpoint.Checkpointer(
            os.path.join(spec.run_dir, "checkpoints"), save_every=cfg.checkpoint_every
        )
        if member_ckpt.latest_step() != cfg.steps:
            member_ckpt.save(cfg.steps, state,
                             {"step": cfg.steps, "name": spec.name, "sweep": name}, force=True)
        member_ckpt.close()
        summary = sae_run.finish_run(spec, state["params"], loop.member(trained.hps, i),
                                     trained.eval_ND, trained.stats(i), t_start)
        rows.append({**members[i], **summary})
    _write_table(sweep_dir, rows, members)
    summary = {
        "name": name,
        "members": len(specs),
        "strategy": strategy,
        "steps": cfg.steps,
        "tokens_per_s": trained.tokens_per_s,
        "member_tokens_per_s": trained.tokens_per_s * len(specs),
        "step_compilations": trained.step_compilations,
        "best_explained_variance": max(r["explained_variance"] for r in rows),
        "wall_s": time.time() - t_start,
    }
    return metrics_io.finish_summary(summary_path, summary)


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
