"""Linear probes on the eval tokens: the residual probe ceiling and k-sparse probing of latents.

Per concept, on a seeded sample of the eval windows split by window (never by token) into a train
and a held-out part:

- `probe_f1`: a logistic-regression probe on the hook's activations (the SAE's input),
  standardized with the train part's moments: the linear ceiling a single direction reaches.
- `sparse_probe_f1_k{k}`: SAEBench's sparse probing on token level: the k SAE latents (reported
  activations) with the largest |mean on positive tokens − mean on negative tokens| on the train
  part, then a logistic probe on just those k latents.

Every probe minimizes mean binary cross-entropy (natural class balance) + l2/2·‖w‖² (bias not
penalized) on standardized inputs by full-batch L-BFGS (at most `steps` steps; it stops once the
gradient norm is below 1e-5), every probe of every concept in one jitted program; its decision
threshold is the one maximizing F1 on the train part, and F1 is scored on the held-out part.
SAEBench differs: mean-pooled sequences, classes balanced by subsampling, sklearn's L2 (C = 1),
threshold 0.5, accuracy. Shape letters: S indexes the k values, K the latents of a probe.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from monosem_jax import config_values, stage_config


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """The probes' settings, validated (see monosem_jax/configs/eval/default.py for each field)."""

    tokens: int = 32768
    train_fraction: float = 0.5
    seed: int = 0
    l2: float = 1e-4
    steps: int = 100
    ks: tuple[int, ...] = (1, 2, 5)

    def __post_init__(self):
        # Each field is the eval config's probe_<field>.
        stage_config.non_negative(self, ("tokens",), "probe_", note="0 = all")
        stage_config.check(0 < self.train_fraction < 1, "probe_train_fraction",
                           self.train_fraction, "a fraction in (0, 1)")
        stage_config.non_negative(self, ("l2", "seed"), "probe_")
        stage_config.positive(self, ("steps",), "probe_")
        stage_config.check(bool(self.ks) and all(0 < int(k) < stage_config.INT_LIMIT
                                                  for k in self.ks),
                           "probe_ks", self.ks, "positive integers below 2**31")


def probe_config_from(config: ml_collections.ConfigDict) -> ProbeConfig:
    """The ProbeConfig of the eval ConfigDict's `probe_*` fields."""
    ks = config_values.int_tuple("probe_ks", config.probe_ks)
    return stage_config.from_config(ProbeConfig, config, "probe_", ks=tuple(sorted(set(ks))))


def split_windows(num_windows: int, per_window: int, cfg: ProbeConfig):
    """(train, test) sorted window indices: a seeded sample of ≈ cfg.tokens tokens' windows,
    each window in one part (a document cut by a window edge may have a piece in each)."""
    count = num_windows if cfg.tokens == 0 else min(num_windows, -(-cfg.tokens // per_window))
    picked_W = np.random.default_rng(cfg.seed).permutation(num_windows)[:count]
    cut = min(max(round(count * cfg.train_fraction), 1), count - 1)
    return np.sort(picked_W[:cut]), np.sort(picked_W[cut:])


# ------------------------------------------------------------------ logistic regression


def probe_logits(w, b_C: jax.Array, x: jax.Array) -> jax.Array:
    """Logits [N, C]: x [N, D] shared by the concepts (w [D, C]), or x [N, C, K] (w [C, K])."""
    if x.ndim == 2:
        return jnp.dot(x, w, precision=jax.lax.Precision.HIGHEST) + b_C[None]
    # One [N, C·K] x [C·K, C] block-diagonal matmul: on CPU faster than a batched matmul or K
    # strided slices, though most of its products are zeros.
    num_n, num_c, num_k = x.shape
    eye_C1C = jnp.eye(num_c, dtype=w.dtype)[:, None, :]
    w_MC = (w[:, :, None] * eye_C1C).reshape(num_c * num_k, num_c)
    return jnp.dot(x.reshape(num_n, num_c * num_k), w_MC,
                   precision=jax.lax.Precision.HIGHEST) + b_C[None]


def logistic_loss(params: tuple, xs: tuple, ys: tuple, l2: float) -> jax.Array:
    """Σ over designs and concepts of mean_n BCE(y_nc, z_nc) + l2/2 ‖w_c‖² (bias unpenalized).

    The problems share nothing, so minimizing the sum solves each one.
    """
    total = jnp.float32(0)
    for p, x, y_NC in zip(params, xs, ys, strict=True):
        z_NC = probe_logits(p["w"], p["b_C"], x)
        # softplus(z) − y z, stable: a third of the cost of the two log-sigmoids of optax's.
        bce_NC = jnp.maximum(z_NC, 0) + jnp.log1p(jnp.exp(-jnp.abs(z_NC))) - y_NC * z_NC
        total += jnp.sum(jnp.mean(bce_NC, axis=0)) + 0.5 * l2 * jnp.sum(p["w"] ** 2)
    return total


def _init(x: jax.Array, y_NC: jax.Array) -> dict:
    """w = 0, bias at the base rate's logit."""
    rate_C = jnp.clip(jnp.mean(y_NC, axis=0), 1e-6, 1 - 1e-6)
    w_shape = x.shape[1:] if x.ndim == 3 else (x.shape[1], y_NC.shape[1])
    return {"w": jnp.zeros(w_shape, jnp.float32), "b_C": jnp.log(rate_C / (1 - rate_C))}


@functools.partial(jax.jit, static_argnames="steps")
def fit_logistic(xs: tuple, ys: tuple, l2: float, steps: int, tol: float = 1e-5) -> tuple:
    """Per design x [N, D] or [N, C, K] with labels [N, C], the {"w", "b_C"} minimizing
    `logistic_loss`: full-batch L-BFGS (zoom line search) from w = 0 for `steps` steps, or
    fewer once the gradient's norm is below `tol`. (Steps past convergence are not free: their
    line search runs to its iteration limit, one loss and gradient per iteration.)"""
    xs = tuple(x.astype(jnp.float32) for x in xs)
    ys = tuple(y.astype(jnp.float32) for y in ys)
    # One flat parameter vector: L-BFGS's ops are per leaf, and fewer leaves compile faster.
    params, unravel = ravel_pytree(tuple(_init(x, y) for x, y in zip(xs, ys, strict=True)))

    def loss(flat):
        return logistic_loss(unravel(flat), xs, ys, l2)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        params, state, _, count = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state, optax.tree.norm(grad), count + 1

    def moving(carry):
        return (carry[3] < steps) & (carry[2] >= tol)

    carry = (params, opt.init(params), jnp.float32(jnp.inf), jnp.int32(0))
    params, _, _, _ = jax.lax.while_loop(moving, step, carry)
    return unravel(params)


_scores = jax.jit(probe_logits)


def moments(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std over the train rows (std 1 for constant columns)."""
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


# ------------------------------------------------------------------ thresholds and F1


def f1_at_threshold(scores_NC: np.ndarray, y_NC: np.ndarray, threshold_C: np.ndarray):
    """F1 [C] of "score > threshold" against the labels; 0 where nothing predicted or present."""
    pred_NC = scores_NC > threshold_C[None]
    tp_C = np.sum(pred_NC & y_NC, axis=0)
    denom_C = pred_NC.sum(0) + y_NC.sum(0)
    return np.where(denom_C > 0, 2 * tp_C / np.maximum(denom_C, 1), 0.0)


def best_threshold(scores_NC: np.ndarray, y_NC: np.ndarray) -> np.ndarray:
    """Per concept the threshold [C] at which "score > t" has the highest F1 on these rows."""
    order_NC = np.argsort(-scores_NC, axis=0, kind="stable")
    sorted_NC = np.take_along_axis(scores_NC, order_NC, axis=0)
    tp_NC = np.cumsum(np.take_along_axis(y_NC, order_NC, axis=0), axis=0)
    predicted_N1 = np.arange(1, scores_NC.shape[0] + 1)[:, None]
    f1_NC = 2 * tp_NC / (predicted_N1 + y_NC.sum(0)[None])
    # Only cut between distinct scores: tied rows are predicted together.
    cut_NC = np.concatenate([sorted_NC[:-1] > sorted_NC[1:],
                             np.ones((1, scores_NC.shape[1]), bool)], axis=0)
    best_C = np.argmax(np.where(cut_NC, f1_NC, -1.0), axis=0)
    columns_C = np.arange(scores_NC.shape[1])
    below_C = np.concatenate([sorted_NC[1:], sorted_NC[-1:] - 1.0], axis=0)[best_C, columns_C]
    threshold_C = (sorted_NC[best_C, columns_C] + below_C) / 2
    return np.where(y_NC.sum(0) > 0, threshold_C, np.inf)  # no positives: predict none


def held_out_f1(problems: Sequence[tuple], l2: float, steps: int) -> list[np.ndarray]:
    """Held-out F1 [C] per (x_train, y_train [N, C], x_test, y_test) problem, all fit at once.

    Inputs are standardized with the train rows' moments; the threshold maximizes train F1.
    """
    scaled = []
    for x_train, y_train, x_test, y_test in problems:
        mean, std = moments(x_train)
        scaled.append(((x_train - mean) / std, y_train, (x_test - mean) / std, y_test))
    fitted = fit_logistic(tuple(p[0] for p in scaled), tuple(p[1] for p in scaled), l2, steps)
    f1s = []
    for params, (x_train, y_train, x_test, y_test) in zip(fitted, scaled, strict=True):
        def score(x, params=params):
            return np.asarray(_scores(params["w"], params["b_C"], x), np.float64)

        threshold_C = best_threshold(score(x_train), y_train)
        f1s.append(f1_at_threshold(score(x_test), y_test, threshold_C))
    return f1s


# ------------------------------------------------------------------ k-sparse latent selection


def class_mean_diff(acts_NF: np.ndarray, y_NC: np.ndarray) -> np.ndarray:
    """[C, F] mean activation on positive rows minus on negative rows (0 where a class is empty)."""
    return class_mean_diff_finish(class_sums(acts_NF, y_NC))


def class_sums(acts_NF, y_NC) -> dict:
    """Per-concept sums over positive rows, all-row sums and counts: `class_mean_diff` in chunks."""
    y_NC = jnp.asarray(y_NC, jnp.float32)
    return {
        "pos_CF": jnp.dot(y_NC.T, acts_NF, precision=jax.lax.Precision.HIGHEST),
        "all_F": jnp.sum(acts_NF, axis=0),
        "pos_C": jnp.sum(y_NC, axis=0),
        "n": jnp.float32(acts_NF.shape[0]),
    }


def class_mean_diff_finish(sums: dict) -> np.ndarray:
    sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
    pos_C1, neg_C1 = sums["pos_C"][:, None], sums["n"] - sums["pos_C"][:, None]
    neg_sum_CF = sums["all_F"][None] - sums["pos_CF"]
    mean_pos = np.where(pos_C1 > 0, sums["pos_CF"] / np.maximum(pos_C1, 1), 0.0)
    return mean_pos - np.where(neg_C1 > 0, neg_sum_CF / np.maximum(neg_C1, 1), 0.0)


def top_k_latents(diff_CF: np.ndarray, k: int) -> np.ndarray:
    """[C, k] latents by descending |class-mean difference| (SAEBench); lower index on ties."""
    return np.argsort(-np.abs(diff_CF), axis=1, kind="stable")[:, :k]


def _chunks(n: int, size: int):
    return (slice(lo, min(lo + size, n)) for lo in range(0, n, size))


def select_and_gather(acts_fn: Callable, x_train_ND, y_train_NC, x_test_ND, k: int,
                      chunk: int = 4096):
    """Top-k latents [C, k] on the train rows and their activations [N, C, k] in both parts.

    acts_fn maps hook activations [n, D] to reported latent activations [n, F]; it runs in
    chunks so no [N, F] matrix is held.
    """
    sums = None
    for s in _chunks(x_train_ND.shape[0], chunk):
        part = jax.device_get(class_sums(acts_fn(x_train_ND[s]), y_train_NC[s]))
        sums = part if sums is None else jax.tree.map(lambda a, b: a + np.float64(b), sums, part)
    idx_CK = top_k_latents(class_mean_diff_finish(sums), k)

    def gather(x_ND):
        return np.concatenate([np.asarray(acts_fn(x_ND[s]))[:, idx_CK]
                               for s in _chunks(x_ND.shape[0], chunk)], axis=0)

    return idx_CK, gather(x_train_ND), gather(x_test_ND)


def stack_ks(x_NCK: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """[N, A·C, K]: for each of the A values k in ks (a-major) every concept's top-K latents,
    those past k zeroed.

    One fit then covers every k: a zeroed (after standardizing, still zero) input keeps its
    weight at 0, so problem (a, c) is exactly the k_a-sparse probe of concept c.
    """
    keep_AK = np.arange(x_NCK.shape[2])[None] < np.asarray(ks)[:, None]
    x_NACK = x_NCK[:, None] * keep_AK[None, :, None].astype(x_NCK.dtype)
    return x_NACK.reshape(x_NCK.shape[0], -1, x_NCK.shape[2])


def concept_probes(acts_fn: Callable, x_train_ND, y_train_NC, x_test_ND, y_test_NC,
                   cfg: ProbeConfig) -> dict[str, np.ndarray]:
    """{"probe_f1": [C], "sparse_probe_f1_k{k}": [C] per k, "sparse_latents": [C, max k]}."""
    idx_CK, train_NCK, test_NCK = select_and_gather(acts_fn, x_train_ND, y_train_NC, x_test_ND,
                                                    max(cfg.ks))
    num_k = len(cfg.ks)
    dense_C, sparse_AC = held_out_f1(
        [(x_train_ND, y_train_NC, x_test_ND, y_test_NC),
         (stack_ks(train_NCK, cfg.ks), np.tile(y_train_NC, (1, num_k)),
          stack_ks(test_NCK, cfg.ks), np.tile(y_test_NC, (1, num_k)))],
        cfg.l2, cfg.steps,
    )
    sparse_AC = sparse_AC.reshape(num_k, -1)
    out = {"probe_f1": dense_C, "sparse_latents": idx_CK}
    out.update({f"sparse_probe_f1_k{k}": sparse_AC[a] for a, k in enumerate(cfg.ks)})
    return out


# ------------------------------------------------------------------ eval summary fields


def probe_fields(table: list[dict], concepts: Sequence[str], results: dict, y_train_NC,
                 y_test_NC, ks: Sequence[int]) -> None:
    """Adds the probe columns to the concept table's rows (None where a part lacks positives)."""
    index = {name: c for c, name in enumerate(concepts)}
    for row in table:
        c = index[row["concept"]]
        ok = bool(y_train_NC[:, c].any() and y_test_NC[:, c].any())
        for key in ["probe_f1", *(f"sparse_probe_f1_k{k}" for k in ks)]:
            row[key] = float(results[key][c]) if ok else None
        row["sparse_probe_latents"] = [int(i) for i in results["sparse_latents"][c]]
        row["probe_test_positives"] = int(y_test_NC[:, c].sum())
        ratio = None
        if ok and 1 in ks and row["probe_f1"] > 0:
            ratio = row["sparse_probe_f1_k1"] / row["probe_f1"]
        row["sparse_probe_over_ceiling_k1"] = ratio


def probe_summary(table: list[dict], train_tokens: int, test_tokens: int, cfg: ProbeConfig,
                  seconds: float) -> dict:
    """Summary-level probe fields: counts over the concept table, the sample and the recipe."""
    probed = [r for r in table if r.get("probe_f1") is not None]
    ratios = [r["sparse_probe_over_ceiling_k1"] for r in probed]
    return {
        "concepts_probed": len(probed),
        "concepts_sparse_probe_k1_over_ceiling_ge_0_9": sum(
            r is not None and r >= 0.9 for r in ratios),
        "probe_train_tokens": int(train_tokens),
        "probe_test_tokens": int(test_tokens),
        "probe_recipe": (
            f"logistic, mean BCE + {cfg.l2:g}/2 |w|^2, full-batch L-BFGS (<= {cfg.steps} steps, "
            "to grad norm 1e-5), standardized inputs; threshold maximizing train F1; random "
            "split by window "
            f"({cfg.train_fraction:g} train); k-sparse latents by |class-mean diff| on train, "
            f"k = {','.join(map(str, cfg.ks))}"
        ),
        "probe_wall_s": float(seconds),
    }
