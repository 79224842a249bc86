"""The SAE train step's tokens/s on 1, 2, 4 and 8 devices: batch over 'data' only, and the
dictionary sharded over 'model' (parallel.dictionary_shardings), each in a fresh process.

On a CPU the devices are simulated (JAX_NUM_CPU_DEVICES splits the same cores), so this measures
the sharded program's correctness and overhead, not a speed-up: the reference is the 1-device
step of the same run, and each row reports tokens/s and its ratio to it. On a GPU host the same
command measures real devices (run it there with --devices=1,2,4,8 up to the GPU count).

  python experiments/bench_sae_devices.py [--variant=topk] [--d=128] [--d_sae=2048]
      [--batch_size=4096] [--steps=20] [--rounds=2]

Prints one JSON line per (devices, layout) and a summary line last.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

VARIANT = flags.DEFINE_string("variant", "topk", "SAE variant.")
D = flags.DEFINE_integer("d", 128, "Activation width (the tiny GPT's).")
D_SAE = flags.DEFINE_integer("d_sae", 2048, "Dictionary size (the default SAE's).")
BATCH = flags.DEFINE_integer("batch_size", 4096, "Rows per step (the default SAE's).")
STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per round.")
ROUNDS = flags.DEFINE_integer("rounds", 2, "Rounds (the median is reported).")
DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts.")
CHILD = flags.DEFINE_string("child", "", "Internal: 'devices,model_parallel' to time here.")


def time_step(model_parallel: int) -> dict:
    """Median tokens/s of the jitted sharded step on this process's devices."""
    import jax
    import numpy as np

    from monosem_jax import parallel
    from monosem_jax.sae import loop, model, step

    cfg = model.SAEConfig(variant=VARIANT.value, d=D.value, d_sae=D_SAE.value, k=16,
                          k_aux=min(256, D_SAE.value))
    mesh = parallel.make_mesh(model_parallel)
    state = jax.device_get(step.init_state(cfg, jax.random.key(0)))
    shardings = parallel.dictionary_shardings(mesh, state)
    rep, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    fn = loop.compile_step(cfg, shardings=((), shardings, data, rep))
    x_BD = np.random.default_rng(1).standard_normal((BATCH.value, D.value), np.float32)
    rates = []
    with jax.set_mesh(mesh):
        states = jax.tree.map(parallel.place, state, shardings)
        hp = jax.tree.map(lambda a: parallel.place(a, rep),
                          jax.device_get(step.default_hparams(cfg, k=16)))
        x = parallel.place(x_BD, data)
        _, states, metrics = fn((), states, x, hp)
        jax.block_until_ready(metrics)
        for _ in range(ROUNDS.value):
            t = time.perf_counter()
            for _ in range(STEPS.value):
                _, states, metrics = fn((), states, x, hp)
            jax.block_until_ready(metrics)
            rates.append(STEPS.value * BATCH.value / (time.perf_counter() - t))
    return {"devices": jax.device_count(), "model_parallel": model_parallel,
            "backend": jax.default_backend(), "tokens_per_s": statistics.median(rates),
            "compilations": fn._cache_size(), "loss": float(metrics["loss"])}


def main(argv):
    del argv
    if CHILD.value:
        _, model_parallel = map(int, CHILD.value.split(","))
        print(json.dumps(time_step(model_parallel)), flush=True)
        return
    rows = []
    for n in map(int, DEVICES.value):
        for model_parallel in sorted({1, n}):
            env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(n))
            cmd = [sys.executable, __file__, f"--child={n},{model_parallel}",
                   *[a for a in sys.argv[1:] if not a.startswith("--devices")]]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["layout"] = "dictionary over model" if model_parallel > 1 else "batch over data"
            rows.append(row)
            print(json.dumps(row), flush=True)
    reference = next(r for r in rows if r["devices"] == 1)["tokens_per_s"]
    for r in rows:
        r["ratio_to_1_device"] = round(r["tokens_per_s"] / reference, 3)
    print(json.dumps({"variant": VARIANT.value, "d": D.value, "d_sae": D_SAE.value,
                      "batch_size": BATCH.value, "reference_tokens_per_s": reference,
                      "rows": [{k: r[k] for k in ("devices", "layout", "tokens_per_s",
                                                  "ratio_to_1_device", "compilations", "loss")}
                               for r in rows]}))


if __name__ == "__main__":
    app.run(main)
