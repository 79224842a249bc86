"""Can a TopK SAE's encoder weight gradient be paid for by its active latents alone?

With TopK, dL/dz is zero outside the k selected latents of each row, so dL/dW_enc = xᵀ·dz is a
sum over B·k (row, latent) pairs, not over B·F. This times that one product three ways on the
same inputs (issue 12's groundwork; the train step is not changed here):

  dense          scatter dz into [B, F], then the GEMM xᵀ·dz  (what jax.grad of loss_topk does)
  scatter_FD     x_b·dz_bk for every pair, scatter-added into rows of an [F, D] buffer
                 (contiguous rows of d), transposed to [D, F]
  sorted_segment the same pairs sorted by latent, then a sorted segment_sum

python experiments/topk_encoder_grad.py                  # B = F = 4096, d 256, k 32, ~1 min
python experiments/topk_encoder_grad.py --d 128 --f 2048 --k 16   # the default SAE's shape
python experiments/topk_encoder_grad.py --smoke          # seconds (tests of the script itself)

Prints one JSON line: the median milliseconds of each over --reps calls, the speed-up of each
over `dense` measured in the same process, and each one's max abs difference from `dense`.
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
    ap.add_argument("--b", type=int, default=4096, help="rows per batch")
    ap.add_argument("--d", type=int, default=256, help="SAE input width")
    ap.add_argument("--f", type=int, default=4096, help="latents")
    ap.add_argument("--k", type=int, default=32, help="active latents per row")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 2 reps")
    args = ap.parse_args(argv)
    if args.smoke:
        args.b, args.d, args.f, args.k, args.reps = 256, 16, 128, 4, 2
    return args


def grad_fns(num_b: int, num_d: int, num_f: int):
    rows_B1 = jnp.arange(num_b)[:, None]

    def dense(x_BD, g_BK, idx_BK):
        dz_BF = jnp.zeros((num_b, num_f), jnp.float32).at[rows_B1, idx_BK].set(
            g_BK, unique_indices=True)
        return x_BD.T @ dz_BF

    def scatter_fd(x_BD, g_BK, idx_BK):
        terms_SD = (g_BK[..., None] * x_BD[:, None, :]).reshape(-1, num_d)
        return jnp.zeros((num_f, num_d), jnp.float32).at[idx_BK.reshape(-1)].add(terms_SD).T

    def sorted_segment(x_BD, g_BK, idx_BK):
        flat_S = idx_BK.reshape(-1)
        order_S = jnp.argsort(flat_S)
        terms_SD = (g_BK[..., None] * x_BD[:, None, :]).reshape(-1, num_d)[order_S]
        return jax.ops.segment_sum(terms_SD, flat_S[order_S], num_segments=num_f,
                                   indices_are_sorted=True).T

    return {"dense": dense, "scatter_FD": scatter_fd, "sorted_segment": sorted_segment}


def main(argv=None) -> None:
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    x_BD = jnp.asarray(rng.standard_normal((args.b, args.d), np.float32))
    z_BF = jnp.asarray(rng.standard_normal((args.b, args.f), np.float32))
    _, idx_BK = jax.lax.top_k(z_BF, args.k)
    g_BK = jnp.asarray(rng.standard_normal((args.b, args.k), np.float32))
    inputs = (x_BD, g_BK, idx_BK)
    fns = {name: jax.jit(fn) for name, fn in grad_fns(args.b, args.d, args.f).items()}
    reference_DF = np.asarray(fns["dense"](*inputs))
    result = {"shape": {"b": args.b, "d": args.d, "f": args.f, "k": args.k},
              "backend": jax.default_backend(), "reps": args.reps, "median_ms": {},
              "speedup_vs_dense": {}, "max_abs_diff": {}}
    for name, fn in fns.items():
        result["median_ms"][name] = 1e3 * timed(fn, *inputs, reps=args.reps)[0]
        result["max_abs_diff"][name] = float(np.max(np.abs(np.asarray(fn(*inputs))
                                                           - reference_DF)))
    for name, ms in result["median_ms"].items():
        result["speedup_vs_dense"][name] = result["median_ms"]["dense"] / ms
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
