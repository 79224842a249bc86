"""Feature completeness: which planted concepts does a dictionary of a given size contain?

Scaling Monosemanticity (section "Feature completeness") finds that whether a concept gets a
feature depends on the concept's frequency and the number of alive features, roughly through
their product, and fits a logistic in log(frequency × alive features). Here the concepts are
known exactly: the generated corpus with `corpus.rare_concepts` characters planted at
log-spaced rates (monosem_jax/corpus/rare_concepts.py) beside its twelve common concepts.

The run: the pipeline's corpus, LM and capture stages on that corpus (W = <root>/w, each stage
resumable), SAEs of several sizes on its store (W/sae/fc_<size>), then per SAE and concept the
best feature's F1 over the store's rows (the tokens the SAE trained on; the SAE never saw a
label): each feature as a detector "activation > t" at t = 0 and at quantiles of its positive
activations, exactly as monosem-eval scores concepts (analysis/metrics.py). A concept has a
feature when its mention F1 reaches --f1_threshold: a mention (a run of tokens labelled with the
character's name, often several BPE pieces) counts as found when the feature fires on any of its
tokens, and every firing outside the concept's mentions is a false positive, so a character's
feature is not penalised for the pieces of a name it need not fire on. Frequency is mentions per
store row; alive features are those that fire at least once on those rows. Token-level F1 (as
monosem-eval reports it) is recorded beside it.

  python experiments/feature_completeness.py                 # the full run (~30 min, 2 cores)
  python experiments/feature_completeness.py --smoke         # the smoke pipeline (a test runs it)

Writes W/completeness/summary.json, completeness.png (P(feature) against frequency × alive
features, per size, with the logistic) and f1_by_frequency.png, then evaluates the largest SAE
and writes W/report.md (with a feature-completeness section); the last stdout line is the JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as `python experiments/feature_completeness.py` from anywhere
    sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from monosem_jax import metrics_io, pipeline  # noqa: E402
from monosem_jax.analysis import evaluate, metrics  # noqa: E402
from monosem_jax.configs.pipeline import tiny  # noqa: E402
from monosem_jax.corpus import dataset  # noqa: E402
from monosem_jax.sae import artifact as sae_artifact  # noqa: E402
from monosem_jax.sae import train as sae_train  # noqa: E402

FLAGS = flags.FLAGS
# Per-feature detector thresholds beyond "> 0": quantiles of its positive activations.
POSITIVE_RATES = (0.5, 0.2, 0.1, 0.05)
SAMPLE_ROWS = 16_384  # rows the thresholds are taken from
CHUNK_ROWS = 8_192

PRESETS = {  # flags left at their default take these
    "full": dict(sizes=(256, 512, 1024, 2048, 4096), rare_concepts=16, max_rate=1e-2,
                 min_rate=1e-5, num_stories=20_000, sae_steps=600),
    "smoke": dict(sizes=(64, 128), rare_concepts=4, max_rate=3e-2, min_rate=3e-3,
                  num_stories=400, sae_steps=40),
}


def define_flags():
    flags.DEFINE_string("root", "/tmp/monosem-completeness", "Work folder (W = <root>/w).")
    flags.DEFINE_bool("smoke", False, "The smoke pipeline and two tiny SAEs (a test runs it).")
    flags.DEFINE_list("sizes", [], "SAE dictionary sizes (default: the preset's).")
    flags.DEFINE_integer("rare_concepts", 0, "Planted characters (default: the preset's).")
    flags.DEFINE_float("max_rate", 0.0, "Most frequent planted rate per word (preset's).")
    flags.DEFINE_float("min_rate", 0.0, "Least frequent planted rate per word (preset's).")
    flags.DEFINE_string("variant", "anthropic_2024", "SAE variant (the paper's L1 SAE).")
    flags.DEFINE_float("f1_threshold", 0.5, "A concept has a feature when its best F1 >= this.")
    flags.DEFINE_integer("max_rows", 0, "Store rows scored per SAE (0 = all).")


def settings() -> dict:
    preset = dict(PRESETS["smoke" if FLAGS.smoke else "full"])
    if FLAGS.sizes:
        preset["sizes"] = tuple(int(s) for s in FLAGS.sizes)
    for name in ("rare_concepts", "max_rate", "min_rate"):
        if getattr(FLAGS, name):
            preset[name] = getattr(FLAGS, name)
    return preset


def pipeline_config(s: dict):
    config = tiny.get_config("smoke" if FLAGS.smoke else "")
    config.corpus.num_stories = s["num_stories"]
    config.corpus.rare_concepts = s["rare_concepts"]
    config.corpus.rare_max_rate = s["max_rate"]
    config.corpus.rare_min_rate = s["min_rate"]
    config.sae.variant = FLAGS.variant
    config.sae.steps = s["sae_steps"]
    return config


# ----------------------------------------------------------------------------- scoring


MAX_MENTIONS = 1024  # rare-concept mentions in one chunk (each chunk ends between mentions)


@jax.jit
def _chunk_counts(sae, x_ND, thresholds_FT, labels_NC, mask_N, mention_N, concept_MR):
    """Token counts (metrics.threshold_counts) and, per rare concept, the mentions on which each
    feature exceeds each threshold on at least one token ([F, T, R]). concept_MR: each of the
    chunk's M mention slots' concept, one-hot; mention_N: the row's slot (M: none)."""
    num_mentions = concept_MR.shape[0]
    a_NF = sae_artifact.feature_acts(sae, x_ND)
    counts = metrics.threshold_counts(a_NF, thresholds_FT, labels_NC, mask_N)
    pooled_MF = jax.ops.segment_max(a_NF, mention_N, num_segments=num_mentions + 1)
    fired_MFT = (pooled_MF[:num_mentions, :, None] > thresholds_FT[None]).astype(jnp.float32)
    counts["mention_tp_FTR"] = jnp.einsum("mft,mr->ftr", fired_MFT, concept_MR)
    return counts


def row_tokens(store, split: dataset.Split, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(token index in the split, uint32 concept bits) of store rows [0, rows) (capture.py: a
    row's token is doc_starts[doc] - 1 + position)."""
    meta = store.read_meta(0, rows)
    index_R = split.doc_starts_D[np.maximum(meta["doc_id"], 0)] - 1 + meta["position"]
    return index_R, np.asarray(split.labels_N[index_R], np.uint32)


def mentions(index_R: np.ndarray, bits_R: np.ndarray, rare_bits: np.ndarray):
    """(mention starts, continuations, each row's rare-concept bits), each [rows]: a mention is
    a run of consecutive tokens labelled with one rare concept."""
    rare_R = bits_R & np.uint32(np.bitwise_or.reduce(rare_bits, initial=0))
    same_R = np.zeros(len(rare_R), bool)
    same_R[1:] = ((index_R[1:] == index_R[:-1] + 1) & (rare_R[1:] != 0)
                  & (rare_R[1:] == rare_R[:-1]))
    return (rare_R != 0) & ~same_R, same_R, rare_R


def chunk_bounds(rows: int, continuation_R: np.ndarray, size: int) -> list[tuple[int, int]]:
    """[start, stop) chunks of at most `size` rows that never cut a mention."""
    bounds, start = [], 0
    while start < rows:
        stop = min(start + size, rows)
        while stop < rows and continuation_R[stop] and stop > start + 1:
            stop -= 1
        bounds.append((start, stop))
        start = stop
    return bounds


def _threshold_sample(store, rows: int) -> np.ndarray:
    """≈ SAMPLE_ROWS rows: 16 contiguous blocks spread over [0, rows) (whole reads, not rows)."""
    block = max(1, min(rows, SAMPLE_ROWS) // 16)
    starts = np.unique(np.linspace(0, rows - block, 16).round().astype(int))
    return np.concatenate([store.read_rows(int(i), int(i) + block) for i in starts])


def score_sae(workdir: str, name: str, concepts: list[str], max_rows: int) -> dict:
    """Over the SAE's store rows: per concept its share of rows and its best feature's token F1;
    per rare concept its mentions per row and best feature's mention F1 (a mention is found when
    the feature fires on any of its tokens; each firing outside the concept's mentions is a
    false positive); and the features that fire at least once."""
    sae = sae_artifact.load_sae(workdir, name)
    store = sae_artifact.training_store("", sae.hook, workdir)
    split = dataset.load_split(os.path.join(workdir, "data"), "train")
    rows = store.rows if max_rows <= 0 else min(max_rows, store.rows)
    rare = [i for i, c in enumerate(concepts) if c.startswith("rare_")]
    rare_bits = np.array([1 << i for i in rare], np.uint32)  # ascending, like `rare`
    index_R, bits_R = row_tokens(store, split, rows)
    starts_R, continuation_R, rare_R = mentions(index_R, bits_R, rare_bits)
    sample_NF = np.asarray(sae_artifact.feature_acts(sae, jnp.asarray(
        _threshold_sample(store, rows))))
    q_FT = metrics.positive_quantile_thresholds(sample_NF, POSITIVE_RATES)
    thresholds_FT = np.concatenate([np.zeros((q_FT.shape[0], 1), np.float32), q_FT], axis=1)
    tp_FTC = pos_FT = label_C = mention_tp_FTR = 0
    for start, stop in chunk_bounds(rows, continuation_R, CHUNK_ROWS):
        n = stop - start
        x_ND = np.zeros((CHUNK_ROWS, store.d), np.float32)  # one compiled shape: pad, mask
        x_ND[:n] = store.read_rows(start, stop)
        labels_NC = np.zeros((CHUNK_ROWS, len(concepts)), bool)
        labels_NC[:n] = evaluate.concept_bits(bits_R[None, start:stop], len(concepts))[0]
        first = np.flatnonzero(starts_R[start:stop])
        if len(first) > MAX_MENTIONS:
            raise RuntimeError(f"{len(first)} mentions in rows [{start}, {stop}); raise "
                               "MAX_MENTIONS")
        mention_N = np.full(CHUNK_ROWS, MAX_MENTIONS, np.int32)
        in_mention = rare_R[start:stop] != 0
        mention_N[:n][in_mention] = (np.cumsum(starts_R[start:stop]) - 1)[in_mention]
        concept_MR = np.zeros((MAX_MENTIONS, len(rare)), np.float32)
        concept_MR[np.arange(len(first)),
                   np.searchsorted(rare_bits, rare_R[start:stop][first])] = 1
        counts = jax.device_get(_chunk_counts(
            sae, jnp.asarray(x_ND), thresholds_FT, labels_NC, np.arange(CHUNK_ROWS) < n,
            mention_N, concept_MR))
        tp_FTC = tp_FTC + counts["tp_UTC"].astype(np.int64)
        pos_FT = pos_FT + counts["pos_UT"].astype(np.int64)
        label_C = label_C + counts["label_C"].astype(np.int64)
        mention_tp_FTR = mention_tp_FTR + counts["mention_tp_FTR"].round().astype(np.int64)
    f1_FTC, _, _ = metrics.f1_from_counts(tp_FTC, pos_FT, label_C)
    feature_C, _, best_C = metrics.best_detectors(f1_FTC)
    mentions_R = np.array([np.sum(starts_R & (rare_R == b)) for b in rare_bits])
    # Firings outside a concept's mentions: all of the feature's, less those on its tokens.
    outside_FTR = pos_FT[:, :, None] - tp_FTC[:, :, rare]
    with np.errstate(divide="ignore", invalid="ignore"):
        mention_f1_FTR = np.nan_to_num(2 * mention_tp_FTR / (
            mention_tp_FTR + outside_FTR + mentions_R[None, None]))
    mention_feature_R, _, mention_best_R = metrics.best_detectors(mention_f1_FTR)
    names = [concepts[i] for i in rare]
    return {
        "name": name,
        "d_sae": int(sae.sae_cfg.d_sae),
        "rows": int(rows),
        "alive": int((pos_FT[:, 0] > 0).sum()),
        "frequency": {c: float(label_C[i] / rows) for i, c in enumerate(concepts)},
        "best_f1": {c: float(best_C[i]) for i, c in enumerate(concepts)},
        "best_feature": {c: int(feature_C[i]) for i, c in enumerate(concepts)},
        "mentions": {c: int(m) for c, m in zip(names, mentions_R, strict=True)},
        "mention_rate": {c: float(m / rows) for c, m in zip(names, mentions_R, strict=True)},
        "best_mention_f1": {c: float(f) for c, f in zip(names, mention_best_R, strict=True)},
        "best_mention_feature": {c: int(f) for c, f in zip(names, mention_feature_R, strict=True)},
    }


# ----------------------------------------------------------------------------- the logistic


def fit_logistic(x, y, ridge: float = 1e-4, iters: int = 100):
    """(w, log-likelihood, McFadden's pseudo-R² = 1 - LL / LL(intercept only)) of
    P(y=1) = σ(w0 + w1·x1 + ...) by maximum likelihood: x [N] or [N, K], w [1 + K]. Newton's
    method, with a tiny ridge on the slopes so separable data converge (and on the intercept,
    so all-0 or all-1 outcomes stay finite)."""
    y = np.asarray(y, np.float64)
    x = np.asarray(x, np.float64).reshape(len(y), -1)
    X = np.concatenate([np.ones((len(y), 1)), x], axis=1)
    w = np.zeros(X.shape[1])
    penalty = np.diag([1e-6] + [ridge] * x.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(X @ w)))
        grad = X.T @ (y - p) - penalty @ w
        hess = X.T @ (X * (p * (1 - p))[:, None]) + penalty
        delta = np.linalg.solve(hess, grad)
        w = w + delta
        if np.abs(delta).max() < 1e-10:
            break
    p = np.clip(1 / (1 + np.exp(-(X @ w))), 1e-12, 1 - 1e-12)
    ll = float(np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)))
    mean = np.clip(y.mean(), 1e-12, 1 - 1e-12)
    ll0 = float(len(y) * (mean * np.log(mean) + (1 - mean) * np.log(1 - mean)))
    return w, ll, (1 - ll / ll0) if ll0 < 0 else float("nan")


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (Spearman's)."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v))
    for value in np.unique(v):
        ranks[v == value] = ranks[v == value].mean()
    return ranks


def completeness(scores: list[dict], rare: list[str], threshold: float) -> dict:
    """The points (one per rare concept and SAE), the logistic over all sizes, and per size the
    fraction with a feature in frequency bins."""
    points = [{"sae": s["name"], "d_sae": s["d_sae"], "alive": s["alive"], "concept": c,
               "frequency": s["mention_rate"][c], "token_share": s["frequency"][c],
               "best_f1": s["best_mention_f1"][c], "token_f1": s["best_f1"][c],
               "has_feature": s["best_mention_f1"][c] >= threshold}
              for s in scores for c in rare if s["mentions"][c] > 0]
    log_f = np.array([np.log10(p["frequency"]) for p in points])
    log_alive = np.array([np.log10(p["alive"]) for p in points])
    x, y = log_f + log_alive, np.array([p["has_feature"] for p in points], np.float64)
    if not 0 < y.sum() < len(y):  # a logistic needs concepts with and without a feature
        return {"points": points, "logistic": dict.fromkeys(_LOGISTIC_KEYS),
                "fraction_with_feature": float(y.mean()) if len(y) else None}
    w, ll, pseudo_r2 = fit_logistic(x, y)
    # Is the product the variable? The same logistic with separate slopes for log frequency
    # and log alive features: twice the log-likelihood gained is χ² with 1 degree of freedom
    # under "the product" (3.84: rejected at 5%).
    w2, ll2, pseudo_r2_2 = fit_logistic(np.stack([log_f, log_alive], axis=1), y)
    fitted = 1 / (1 + np.exp(-(w[0] + w[1] * x)))
    return {
        "points": points,
        "logistic": {"intercept": float(w[0]), "slope_per_decade": float(w[1]),
                     "pseudo_r2_mcfadden": pseudo_r2,
                     # where P = 1/2: log10(frequency × alive features)
                     "midpoint_log10_freq_x_alive": float(-w[0] / w[1])},
        "logistic_separate_slopes": {
            "intercept": float(w2[0]), "slope_log_frequency": float(w2[1]),
            "slope_log_alive": float(w2[2]), "pseudo_r2_mcfadden": pseudo_r2_2,
            "likelihood_ratio_chi2": 2 * (ll2 - ll)},
        # The points the product's logistic gets most wrong (|outcome - P| > 0.6).
        "misfits": [{k: points[i][k] for k in ("concept", "d_sae", "frequency", "best_f1")}
                    | {"fitted_p": float(fitted[i])}
                    for i in np.flatnonzero(np.abs(y - fitted) > 0.6)],
        "spearman_has_feature_vs_log_freq_x_alive": float(
            np.corrcoef(_ranks(x), _ranks(y))[0, 1]),
        "fraction_with_feature": float(y.mean()),
    }


_LOGISTIC_KEYS = ("intercept", "slope_per_decade", "pseudo_r2_mcfadden",
                  "midpoint_log10_freq_x_alive")


def plot(result: dict, scores: list[dict], rare: list[str], out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, fit = result["points"], result["logistic"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for size in sorted({p["d_sae"] for p in points}):
        mine = [p for p in points if p["d_sae"] == size]
        xs = [p["frequency"] * p["alive"] for p in mine]
        ys = [p["has_feature"] + 0.02 * np.log2(size / 256) for p in mine]  # jitter by size
        ax.scatter(xs, ys, s=14, label=f"{size} features")
    if points and fit["intercept"] is not None:
        grid = np.logspace(np.log10(min(p["frequency"] * p["alive"] for p in points)) - 0.3,
                           np.log10(max(p["frequency"] * p["alive"] for p in points)) + 0.3, 200)
        ax.plot(grid, 1 / (1 + np.exp(-(fit["intercept"] + fit["slope_per_decade"]
                                         * np.log10(grid)))), "k-",
                label=f"logistic (pseudo-R² {fit['pseudo_r2_mcfadden']:.2f})")
    ax.set_xscale("log")
    ax.set_xlabel("concept frequency (mentions per token) × alive features")
    ax.set_ylabel(f"has a feature (F1 ≥ {FLAGS.f1_threshold})")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "completeness.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in scores:
        freq = [s["mention_rate"][c] for c in rare]
        ax.plot(freq, [s["best_mention_f1"][c] for c in rare], "o-", ms=3,
                label=f"{s['d_sae']}")
    ax.axhline(FLAGS.f1_threshold, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("concept frequency (mentions per token)")
    ax.set_ylabel("best feature's mention F1")
    ax.legend(fontsize=7, title="features")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "f1_by_frequency.png"), dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    t0 = time.time()
    s = settings()
    workdir = os.path.join(FLAGS.root, "w")
    config = pipeline_config(s)
    pipeline.check_config(config)
    seconds = {}
    for stage in pipeline.STAGES[:3]:  # corpus, lm, acts: each resumes or is a no-op
        t = time.time()
        pipeline.check_stage_config(config, workdir, stage)
        stage.run(config, workdir)
        seconds[stage.name] = round(time.time() - t, 1)
    concepts = dataset.load_meta(os.path.join(workdir, "data"))["concepts"]
    rare = [c for c in concepts if c.startswith("rare_")]
    scores = []
    for size in s["sizes"]:
        t = time.time()
        sae_config = config.sae
        sae_config.d_sae, sae_config.name = size, f"fc_{size}"
        logging.info("SAE %s: %d features, %d steps", sae_config.name, size, sae_config.steps)
        summary = sae_train.train_sae(sae_config, workdir)
        # Scores are kept per SAE (a rerun, or one killed while scoring, rescores none twice).
        cached = os.path.join(workdir, "completeness", "scores", f"{sae_config.name}.json")
        score = metrics_io.read_json(cached) if os.path.exists(cached) else None
        if score is None or score.get("max_rows") != FLAGS.max_rows:
            score = score_sae(workdir, sae_config.name, concepts, FLAGS.max_rows)
            score.update(max_rows=FLAGS.max_rows, l0=summary.get("l0"),
                         explained_variance=summary.get("explained_variance"))
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            metrics_io.write_json_atomic(cached, score)
        scores.append(score)
        seconds[sae_config.name] = round(time.time() - t, 1)
        logging.info("SAE %s: %d alive; best F1 per rare concept %s", sae_config.name,
                     score["alive"], [round(score["best_mention_f1"][c], 2) for c in rare])
    result = completeness(scores, rare, FLAGS.f1_threshold)
    result.update(settings={**s, "variant": FLAGS.variant, "f1_threshold": FLAGS.f1_threshold},
                  scores=scores)
    out_dir = os.path.join(workdir, "completeness")
    os.makedirs(out_dir, exist_ok=True)
    plot(result, scores, rare, out_dir)
    metrics_io.write_json_atomic(os.path.join(out_dir, "summary.json"), result)
    # The largest SAE evaluated as the pipeline evaluates (its concept table holds the rare
    # characters' token F1) and the report, with this section.
    t = time.time()
    config.eval.sae_name = f"fc_{max(s['sizes'])}"
    report_summary = os.path.join(workdir, "report", "summary.json")
    if os.path.exists(report_summary):
        os.remove(report_summary)  # the report is rewritten with this run's section
    stages = {stage.name: stage for stage in pipeline.STAGES}
    for name in ("eval", "report"):
        stages[name].run(config, workdir)
    seconds["eval_and_report"] = round(time.time() - t, 1)
    result.update(seconds=seconds, wall_s=round(time.time() - t0, 1))
    metrics_io.write_json_atomic(os.path.join(out_dir, "summary.json"), result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("points", "scores")}))


if __name__ == "__main__":
    define_flags()
    app.run(main)
