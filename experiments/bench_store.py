"""Can the activation reader feed SAE training? Reader rows/s against the SAE step's rows/s.

Question: the streaming reader (shard-aligned reads in a background thread, shuffle buffer,
device_put) must deliver rows as device arrays at least 5x faster than the default SAE training
step consumes them, so training never waits on data. Both are measured in this one run.

  python experiments/bench_store.py                        # a fresh 1M-row d=128 file store
  python experiments/bench_store.py --workdir=W            # the pipeline's captured store

Prints one JSON object last: reader_rows_per_s, sae_step_rows_per_s, ratio (goal >= 5).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from monosem_jax.activations import reader as reader_lib
from monosem_jax.activations import store as store_lib
from monosem_jax.activations import store_writer
from monosem_jax.configs.sae import default as sae_default
from monosem_jax.sae import loop as sae_loop
from monosem_jax.sae import run as sae_run
from monosem_jax.sae import step as sae_step

FLAGS = flags.DEFINE_string("workdir", "", "Use W/acts/<hook> instead of a fresh synthetic store.")
ROWS = flags.DEFINE_integer("rows", 1_000_000, "Rows of the synthetic store.")
D = flags.DEFINE_integer("d", 128, "Width of the synthetic store.")
BATCHES = flags.DEFINE_integer("batches", 200, "Batches timed per reader round.")
STEPS = flags.DEFINE_integer("steps", 20, "SAE steps timed per round.")
ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds (medians are reported).")


def synthetic_store(root: str, rows: int, d: int, hook: str = "bench") -> store_lib.Store:
    """A finished float32 store of Gaussian rows (reading speed does not depend on values)."""
    spec = store_lib.StoreSpec(store_lib.kvstore_for(root), hook, d, "float32", 65536)
    x_RD = np.random.default_rng(0).standard_normal((rows, d), np.float32)
    return store_writer.write_array(spec, x_RD, {"synthetic": True})


def reader_rows_per_s(st: store_lib.Store, batch_size: int, batches: int, seed: int) -> float:
    """Rows/s delivered as device arrays (the batch is ready on device when counted)."""
    reader = reader_lib.ActivationReader(
        st, reader_lib.ReaderConfig(batch_size=batch_size, seed=seed, eval_rows=0)
    )
    stream = reader.iterate(0, device_put=True)
    jax.block_until_ready(next(stream))  # thread start-up and the first window
    t = time.perf_counter()
    for _ in range(batches):
        jax.block_until_ready(next(stream))
    rate = batches * batch_size / (time.perf_counter() - t)
    stream.close()
    reader.close()
    return rate


def sae_rows_per_s(d: int, steps: int) -> tuple[float, dict]:
    """Rows/s consumed by the default SAE step on device-resident batches."""
    config = sae_default.get_config()
    spec = sae_run.run_spec(sae_run.TrainConfig.from_config(config), "/nonexistent", d)
    hp = spec.device_hparams()
    state = sae_step.init_state(spec.sae_cfg, jax.random.key(0))
    step_fn = sae_loop.compile_step(spec.sae_cfg)
    x_BD = jax.device_put(
        np.random.default_rng(1).standard_normal((config.batch_size, d), np.float32)
    )
    _, state, metrics = step_fn((), state, x_BD, hp)
    jax.block_until_ready(metrics)
    t = time.perf_counter()
    for _ in range(steps):
        _, state, metrics = step_fn((), state, x_BD, hp)
    jax.block_until_ready(metrics)
    shape = {
        "variant": spec.sae_cfg.variant,
        "d_sae": spec.sae_cfg.d_sae,
        "batch_size": config.batch_size,
    }
    return steps * config.batch_size / (time.perf_counter() - t), shape


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        if FLAGS.value:
            hook = sae_default.get_config().hook
            st = store_lib.open_store(
                store_lib.kvstore_for(os.path.join(FLAGS.value, "acts")), hook
            )
        else:
            t = time.perf_counter()
            st = synthetic_store(os.path.join(tmp, "store"), ROWS.value, D.value)
            print(f"wrote {st.rows} rows in {time.perf_counter() - t:.1f}s", flush=True)
        batch = sae_default.get_config().batch_size
        reads, steps = [], []
        shape = {}
        for r in range(ROUNDS.value):  # alternate, so machine noise hits both sides
            reads.append(reader_rows_per_s(st, batch, BATCHES.value, seed=r))
            rate, shape = sae_rows_per_s(st.d, STEPS.value)
            steps.append(rate)
            print(
                f"round {r}: reader {reads[-1]:,.0f} rows/s, SAE step {steps[-1]:,.0f} rows/s",
                flush=True,
            )
    result = {
        "store_rows": st.rows,
        "d": st.d,
        **shape,
        "backend": jax.default_backend(),
        "reader_rows_per_s": statistics.median(reads),
        "sae_step_rows_per_s": statistics.median(steps),
        "reader_rounds": reads,
        "sae_step_rounds": steps,
    }
    result["ratio"] = result["reader_rows_per_s"] / result["sae_step_rows_per_s"]
    result["goal_ratio"] = 5.0
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
