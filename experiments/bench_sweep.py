"""Is a one-program sweep faster than training its members one after another?

Question: 8 SAE configurations at the default shape (d=128, d_sae=2048, batch 4096) trained by
`monosem-sweep` in one compiled program on shared batches, against the sum of 8 single runs
(`monosem-train-sae`, each with its own data reading, compile and evaluation), both measured
here, for each sweep strategy (vmap, lax.map, unrolled loop). Goal: sweep / sum <= 0.6, never
worse than 1.0.

  python experiments/bench_sweep.py                 # a synthetic 600k-row d=128 store
  python experiments/bench_sweep.py --workdir=W     # the pipeline's captured store (W/acts)
  python experiments/bench_sweep.py --rows=20000 --steps=2 --strategies=vmap   # a code check

Prints one JSON object last with the wall times, the ratio per strategy and the fastest one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import jax
import numpy as np
from absl import app, flags, logging

import monosem_jax
from monosem_jax.activations import store, store_writer
from monosem_jax.configs.sae import default as sae_default
from monosem_jax.sae import sweep as sae_sweep

WORKDIR = flags.DEFINE_string("workdir", "", "Work directory with a captured store (W/acts).")
STEPS = flags.DEFINE_integer("steps", 100, "Steps per run.")
ROWS = flags.DEFINE_integer("rows", 600_000, "Rows of the synthetic store.")
STRATEGIES = flags.DEFINE_list("strategies", ["vmap", "map", "loop"], "Sweep strategies to time.")
GRID = "l1_coef=2,3,4,5,6,8,10,12"  # 8 members


def _config(store_root: str, steps: int):
    config = sae_default.get_config()
    config.store = store_root
    config.steps = steps
    config.log_every = steps
    config.checkpoint_every = steps
    config.sweep.grid = (GRID,)
    return config


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        if WORKDIR.value:
            root = os.path.join(WORKDIR.value, "acts")
        else:
            root = os.path.join(tmp, "acts")
            spec = store.StoreSpec(store.kvstore_for(root), sae_default.get_config().hook, 128,
                                   "float32", 65536)
            x_RD = np.random.default_rng(0).standard_normal((ROWS.value, 128), np.float32)
            store_writer.write_array(spec, x_RD, {"synthetic": True})
        members = sae_sweep.parse_grid(GRID)
        t = time.perf_counter()
        for i, member in enumerate(members):
            config = _config(root, STEPS.value)
            config.name = f"single_{i}"
            config.l1_coef = member["l1_coef"]
            monosem_jax.train_sae(config, os.path.join(tmp, "singles"))
        singles_s = time.perf_counter() - t
        print(f"8 single runs: {singles_s:.1f}s", flush=True)
        sweeps = {}
        for strategy in STRATEGIES.value:
            config = _config(root, STEPS.value)
            config.sweep.strategy = strategy
            t = time.perf_counter()
            sae_sweep.sweep(config, os.path.join(tmp, f"sweep_{strategy}"))
            sweeps[strategy] = time.perf_counter() - t
            print(f"sweep ({strategy}): {sweeps[strategy]:.1f}s", flush=True)
    best = min(sweeps, key=sweeps.get)
    result = {
        "backend": jax.default_backend(),
        "members": len(members),
        "steps": STEPS.value,
        "d_sae": sae_default.get_config().d_sae,
        "batch_size": sae_default.get_config().batch_size,
        "singles_wall_s": singles_s,
        "sweep_wall_s": sweeps,
        "ratio": {s: w / singles_s for s, w in sweeps.items()},
        "best_strategy": best,
        "best_ratio": sweeps[best] / singles_s,
        "goal_ratio": 0.6,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
