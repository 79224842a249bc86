"""Is attribution a good estimate of the true ablation effect? (Scaling Monosemanticity, 2024)

Question: for every feature active in a prompt, does the one-backward-pass attribution
sum_t a_ti dT/da_ti predict the true effect on the target T of zeroing the feature at every
position (SAE error held fixed, see monosem_jax/intervene/attribution.py)? Goal: median over
prompts of the Pearson correlation >= 0.8 for the loss target and >= 0.9 for logit:next.

Prompts: the openings of the first --prompts held-out (eval split) documents that have at least
--prompt-len - 1 tokens: the EOT separator then the document's first tokens, exactly the form
monosem-attribute gives a typed prompt. Targets: 'loss' (mean next-token CE over the prompt;
the goal) and 'logit:next' (the logit of the prompt's last token where it is predicted: one
position's logit, a harder, less averaged target), each with its own correlations.

  python experiments/attribution_vs_ablation.py --workdir=W [--sae-name=NAME]
  python experiments/attribution_vs_ablation.py --workdir=W --prompts=5 --prompt-len=32

Prints per-prompt correlations and the pooled scatter PNG (W/attribution/vs_ablation_<sae>.png,
one panel per target); the last stdout line is one JSON object: pearson_median,
spearman_median (loss), per-prompt values and active-feature counts, the same for logit:next,
and diagnostics of where the first-order estimate errs (see `diagnostics`).

Result (the default pipeline since issue 10: 2-layer RoPE LM, topk SAE with 2,048 latents at
blocks.0.hook_resid_post; 20 prompts, 39 s on 2 CPU cores): goal met. Loss target: median
Pearson 0.876 (Spearman 0.933, worst prompt 0.690); logit:next: 0.924 (0.956). Before (4-layer
LM, anthropic_2024 at blocks.1.hook_resid_post): loss 0.61, logit:next 0.97. The misses were a
few features per prompt that made up >= 30% of the residual's norm at a position: the target is
flat in their activation near the clean value and moves only close to zero, so the local
gradient misses most of the effect; a TopK SAE spreads the norm over 16 latents per token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as `python experiments/attribution_vs_ablation.py` from anywhere
    sys.path.insert(0, REPO)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from monosem_jax import metrics_io  # noqa: E402
from monosem_jax.corpus import dataset  # noqa: E402
from monosem_jax.gpt import model as gpt_model  # noqa: E402
from monosem_jax.intervene import attribution as attr  # noqa: E402
from monosem_jax.intervene import splice  # noqa: E402

GOAL = 0.8  # median Pearson, loss target
GOAL_LOGIT = 0.9  # median Pearson, logit:next target
TARGETS = ("loss", "logit:next")


def story_openings(workdir: str, eot: int, count: int, length: int) -> np.ndarray:
    """[P, length] int32: EOT then the first length - 1 tokens of held-out documents."""
    split = dataset.load_split(os.path.join(workdir, "data"), "eval")
    starts_D = np.asarray(split.doc_starts_D)
    # A document ends at the EOT before the next one (or at the end of the stream).
    ends_D = np.append(starts_D[1:] - 1, split.tokens_N.shape[0])
    chosen = starts_D[ends_D - starts_D >= length - 1][:count]
    if chosen.size < count:
        raise ValueError(f"only {chosen.size} eval documents have >= {length - 1} tokens")
    prompts_PL = np.stack([np.asarray(split.tokens_N[s - 1: s - 1 + length]) for s in chosen])
    assert np.all(prompts_PL[:, 0] == eot), "documents are not EOT-separated"
    return prompts_PL.astype(np.int32)


def relative_sizes(model, bound: attr.Bound, tokens_L: np.ndarray, r: attr.Result) -> np.ndarray:
    """[K] the largest share of the hook's norm a feature makes up at one position:
    max_t a_ti / ||x_t c|| (a_i d_i has norm a_i / c). Zeroing a feature that is half the
    residual vector is no small perturbation: the first-order estimate should fail there."""
    tokens_L = jnp.asarray(tokens_L, jnp.int32)
    _, captured = gpt_model.forward(model.model_cfg, model.lm_params, tokens_L[None],
                                    capture=[model.hook])
    norm_L = np.linalg.norm(np.asarray(captured[model.hook][0]), axis=-1) * model.sae.norm_scale
    a0_LF, _ = attr.clean(bound.static, bound.arrays, tokens_L)
    return (np.asarray(a0_LF)[:, r.ids_K] / norm_L[:, None]).max(axis=0)


def _binned(key_K, attr_K, abl_K, edges) -> list[dict]:
    err_K = np.abs(abl_K - attr_K)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (key_K >= lo) & (key_K <= hi)
        rows.append({
            "range": [float(lo), float(hi)], "features": int(sel.sum()),
            "pearson": attr.correlations(attr_K[sel], abl_K[sel])[0],
            "ablation_share": float(np.abs(abl_K[sel]).sum() / max(np.abs(abl_K).sum(), 1e-30)),
            "error_share": float(err_K[sel].sum() / max(err_K.sum(), 1e-30)),
        })
    return rows


def diagnostics(results: list[attr.Result], rel_sizes: list[np.ndarray]) -> dict:
    """Where first-order attribution errs: features binned by their largest activation and by
    their largest share of the hook's norm."""
    act_K = np.concatenate([r.act_max_K for r in results])
    attr_K = np.concatenate([r.attribution_K for r in results])
    abl_K = np.concatenate([r.ablation_K for r in results])
    pooled_p, pooled_s = attr.correlations(attr_K, abl_K)
    # Relative error of the estimate on the features that matter (|ablation| above the median).
    big = np.abs(abl_K) >= np.median(np.abs(abl_K))
    rel_err_B = np.abs(attr_K - abl_K)[big] / np.abs(abl_K)[big]
    share_K = np.concatenate(rel_sizes)
    return {
        "pooled_pearson": pooled_p,
        "pooled_spearman": pooled_s,
        "median_relative_error_big": float(np.median(rel_err_B)) if rel_err_B.size else None,
        "sign_agreement": float(np.mean(np.sign(attr_K) == np.sign(abl_K))),
        "slope_ablation_on_attribution": float(np.dot(attr_K, abl_K) / np.dot(attr_K, attr_K)),
        "by_act_max": _binned(act_K, attr_K, abl_K, np.quantile(act_K, [0, 0.5, 0.9, 1])),
        "by_norm_share": _binned(share_K, attr_K, abl_K, np.array([0, 0.1, 0.2, 0.3, 0.5, 10])),
    }


SCALES = (1.0, 0.75, 0.5, 0.25, 0.0)


def worst_feature_curve(bound: attr.Bound, tokens_L: np.ndarray, r: attr.Result) -> dict:
    """T with the feature of largest |ablation - attribution| scaled by s = 1 .. 0: shows where
    the first-order estimate breaks (flat near s = 1 and a jump near 0 is saturation)."""
    k = int(np.argmax(np.abs(r.ablation_K - r.attribution_K)))
    i = int(r.ids_K[k])
    tokens_L = jnp.asarray(tokens_L, jnp.int32)
    a0_LF, _ = attr.clean(bound.static, bound.arrays, tokens_L)
    curve = [
        float(attr.target_of_acts(bound.static, bound.arrays, tokens_L, a0_LF,
                                  a0_LF.at[:, i].multiply(s)))
        for s in SCALES
    ]
    total = curve[-1] - curve[0]
    return {
        "feature": i, "act_max": float(r.act_max_K[k]), "attribution": float(r.attribution_K[k]),
        "ablation": float(r.ablation_K[k]), "T_at_scales": [round(v, 5) for v in curve],
        # share of the whole ablation change that happens between s = 0.25 and s = 0
        "last_quarter_share": (curve[-1] - curve[-2]) / total if total else None,
    }


def run_target(model, target_text: str, prompts_PL: np.ndarray, chunk: int):
    bound = attr.bind(model, attr.parse_target(model, target_text))
    results, curves, rel_sizes = [], [], []
    for p, tokens_L in enumerate(prompts_PL):
        t0 = time.time()
        r = attr.attribute(bound, tokens_L, chunk)
        results.append(r)
        curves.append(worst_feature_curve(bound, tokens_L, r))
        rel_sizes.append(relative_sizes(model, bound, tokens_L, r))
        print(f"  [{target_text}] prompt {p:2d}: {r.ids_K.size:4d} active, Pearson "
              f"{r.pearson:.3f}, Spearman {r.spearman:.3f}, T = {r.value:.3f} "
              f"({time.time() - t0:.1f}s)", flush=True)
    return results, curves, rel_sizes


def scatter(path: str, per_target: dict[str, list[attr.Result]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(per_target), figsize=(5 * len(per_target), 5), squeeze=False)
    for ax, (name, results) in zip(axes[0], per_target.items(), strict=True):
        x_K = np.concatenate([r.attribution_K for r in results])
        y_K = np.concatenate([r.ablation_K for r in results])
        ax.scatter(x_K, y_K, s=5, alpha=0.35, lw=0)
        lo, hi = float(min(x_K.min(), y_K.min(), 0)), float(max(x_K.max(), y_K.max(), 0))
        ax.plot([lo, hi], [lo, hi], color="tab:red", ls="--", lw=1, label="y = x")
        p, s = attr.correlations(x_K, y_K)
        med = np.nanmedian([r.pearson for r in results])
        ax.set_title(f"{name}: {x_K.size} (prompt, feature) pairs\npooled Pearson {p:.3f}, "
                     f"Spearman {s:.3f}\nmedian per-prompt Pearson {med:.3f}", fontsize=9)
        ax.set_xlabel("attribution")
        ax.set_ylabel("ablation effect")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pearson_without_worst(r: attr.Result, n: int) -> float:
    """A prompt's Pearson with its n features of largest |ablation - attribution| left out."""
    worst = np.argsort(-np.abs(r.ablation_K - r.attribution_K))[:n]
    return attr.correlations(np.delete(r.attribution_K, worst), np.delete(r.ablation_K, worst))[0]


def summarise(results: list[attr.Result], curves: list[dict], rel_sizes) -> dict:
    pearson = [r.pearson for r in results]
    spearman = [r.spearman for r in results]
    return {
        "pearson_median": float(np.nanmedian(pearson)),
        "spearman_median": float(np.nanmedian(spearman)),
        "pearson_min": float(np.nanmin(pearson)),
        "pearson": [round(v, 4) for v in pearson],
        "spearman": [round(v, 4) for v in spearman],
        "active_features": [int(r.ids_K.size) for r in results],
        "diagnostics": {
            **diagnostics(results, rel_sizes),
            # Not the measure: how much a prompt's Pearson owes to its 3 worst-estimated features.
            "pearson_median_without_3_worst": float(
                np.nanmedian([pearson_without_worst(r, 3) for r in results])
            ),
            "worst_feature_last_quarter_share_median": float(np.nanmedian(
                [c["last_quarter_share"] or np.nan for c in curves])),
            "worst_feature_per_prompt": curves,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--sae-name", default="", help="default: the pipeline's SAE")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--prompt-len", type=int, default=64, help="tokens, EOT included")
    parser.add_argument("--chunk", type=int, default=64, help="features per vmapped ablation")
    args = parser.parse_args()

    t_start = time.time()
    args.sae_name = metrics_io.resolve_sae_name(args.workdir, args.sae_name)
    model = splice.load(args.workdir, args.sae_name)
    prompts_PL = story_openings(args.workdir, model.eot, args.prompts, args.prompt_len)
    per_target, extras = {}, {}
    for target_text in TARGETS:
        per_target[target_text], *extras[target_text] = run_target(
            model, target_text, prompts_PL, args.chunk
        )

    out_dir = os.path.join(args.workdir, "attribution")
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, f"vs_ablation_{args.sae_name}.png")
    scatter(png, per_target, f"{args.sae_name} @ {model.hook}: {len(prompts_PL)} eval story "
                             f"openings of {args.prompt_len} tokens")
    loss = summarise(per_target["loss"], *extras["loss"])
    logit_next = summarise(per_target["logit:next"], *extras["logit:next"])
    summary = {
        **{k: loss[k] for k in ("pearson_median", "spearman_median")},
        "goal_met": bool(loss["pearson_median"] >= GOAL
                         and logit_next["pearson_median"] >= GOAL_LOGIT),
        "loss": loss,
        "logit_next": logit_next,
        "sae_name": args.sae_name,
        "hook": model.hook,
        "prompts": len(prompts_PL),
        "prompt_len": args.prompt_len,
        "png": png,
        "wall_s": round(time.time() - t_start, 1),
    }
    metrics_io.write_json_atomic(os.path.join(out_dir, f"vs_ablation_{args.sae_name}.json"),
                                 summary)
    print(f"scatter: {png}")
    print(json.dumps(summary, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
