"""Is a bfloat16 matmul (float32 accumulation) faster than float32 on this CPU?

Issue 12 asks to try bfloat16 matmuls on CPU (AVX-512 BF16 / AMX machines) with float32
accumulation and parameters. Before any step is changed, this times the SAE encoder's product
x_BD @ W_DF alone both ways, in one process, and reports the relative error of the bf16 result.

python experiments/bf16_matmul.py                 # B = F = 4096, d 256
python experiments/bf16_matmul.py --d 128 --f 2048
python experiments/bf16_matmul.py --smoke

Prints one JSON line: median ms of each, the bf16 speed-up, GFLOP/s, the relative error.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _bench_common import timed  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--b", type=int, default=4096)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--f", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 2 reps")
    args = ap.parse_args(argv)
    if args.smoke:
        args.b, args.d, args.f, args.reps = 256, 16, 128, 2
    return args


def matmul_f32(x_BD, w_DF):
    return x_BD @ w_DF


def matmul_bf16(x_BD, w_DF):
    return jnp.matmul(x_BD.astype(jnp.bfloat16), w_DF.astype(jnp.bfloat16),
                      preferred_element_type=jnp.float32)


def main(argv=None) -> None:
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    x_BD = jnp.asarray(rng.standard_normal((args.b, args.d), np.float32))
    w_DF = jnp.asarray(rng.standard_normal((args.d, args.f), np.float32))
    fns = {"float32": jax.jit(matmul_f32), "bfloat16_f32_acc": jax.jit(matmul_bf16)}
    ms = {name: 1e3 * timed(fn, x_BD, w_DF, reps=args.reps)[0] for name, fn in fns.items()}
    exact = np.asarray(x_BD, np.float64) @ np.asarray(w_DF, np.float64)
    rel_err = {name: float(np.linalg.norm(np.asarray(fn(x_BD, w_DF)) - exact)
                           / np.linalg.norm(exact)) for name, fn in fns.items()}
    flops = 2.0 * args.b * args.d * args.f
    print(json.dumps({
        "shape": {"b": args.b, "d": args.d, "f": args.f}, "backend": jax.default_backend(),
        "reps": args.reps, "median_ms": ms, "gflops": {k: flops / v / 1e6 for k, v in ms.items()},
        "bf16_speedup": ms["float32"] / ms["bfloat16_f32_acc"], "relative_error": rel_err,
    }, sort_keys=True))


if __name__ == "__main__":
    main()
