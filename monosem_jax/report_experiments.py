"""The run report's sections of experiments run on the work dir: experiments/scaling_laws.py
(W/scaling_laws/scaling_laws.json) and experiments/feature_completeness.py
(W/completeness/summary.json). Each is shown when its file exists."""

from __future__ import annotations

import os
import shutil

from monosem_jax import metrics_io


def completeness_lines(workdir: str, report_dir: str) -> list[str]:
    """The feature-completeness section, when experiments/feature_completeness.py ran on W
    (W/completeness/summary.json)."""
    path = os.path.join(workdir, "completeness", "summary.json")
    if not os.path.exists(path):
        return []
    result = metrics_io.read_json(path)
    fit, settings = result["logistic"], result["settings"]
    lines = [
        "## Feature completeness",
        "",
        f"{settings['rare_concepts']} planted characters (corpus.rare_concepts) at rates "
        f"{settings['max_rate']:g} to {settings['min_rate']:g} per word, against SAEs of "
        f"{', '.join(map(str, settings['sizes']))} features ({settings['variant']}; "
        "experiments/feature_completeness.py). A character has a feature when some feature's "
        f"mention F1 reaches {settings['f1_threshold']}: "
        f"**{result['fraction_with_feature']:.2f}** of (character, SAE) pairs.",
        "",
    ]
    if fit["slope_per_decade"] is not None:
        lines += [
            f"A logistic in log10(mentions per token × alive features) fits all sizes with "
            f"McFadden pseudo-R² **{fit['pseudo_r2_mcfadden']:.2f}**: P = 1/2 at "
            f"{10 ** fit['midpoint_log10_freq_x_alive']:.3g}, slope "
            f"{fit['slope_per_decade']:.2f} per decade.",
            "",
        ]
    separate = result.get("logistic_separate_slopes")
    if separate:
        misfits = ", ".join(f"{m['concept']} at {m['d_sae']} (F1 {m['best_f1']:.2f}, fitted "
                            f"P {m['fitted_p']:.2f})" for m in result.get("misfits", []))
        lines += [
            f"Separate slopes for log frequency ({separate['slope_log_frequency']:.2f}) and log "
            f"alive features ({separate['slope_log_alive']:.2f}): pseudo-R² "
            f"{separate['pseudo_r2_mcfadden']:.2f}, likelihood-ratio χ² "
            f"{separate['likelihood_ratio_chi2']:.2f} (1 d.f.; above 3.84 the product is "
            f"rejected at 5%). Misfits of the product's logistic: {misfits or 'none'}.",
            "",
        ]
    lines += ["| features | alive | characters with a feature |", "|---|---|---|"]
    for score in result["scores"]:
        found = [p for p in result["points"] if p["sae"] == score["name"]]
        lines.append(f"| {score['d_sae']} | {score['alive']} | "
                     f"{sum(p['has_feature'] for p in found)} of {len(found)} |")
    lines.append("")
    figure = os.path.join(workdir, "completeness", "completeness.png")
    if os.path.exists(figure):
        shutil.copy(figure, os.path.join(report_dir, "completeness.png"))
        lines += ["![feature completeness](report/completeness.png)", ""]
    return lines


def scaling_lines(workdir: str, report_dir: str) -> list[str]:
    """The scaling-laws section, when experiments/scaling_laws.py ran on W (its default --out,
    W/scaling_laws/scaling_laws.json)."""
    path = os.path.join(workdir, "scaling_laws", "scaling_laws.json")
    if not os.path.exists(path):
        return []
    result = metrics_io.read_json(path)
    exps, fits = result["exponents"], result["fits"]

    def law(key: str, what: str) -> str:
        e = exps[key]
        return (f"{what} ∝ C^{e['exponent']:.3f} (± {e['se']:.3f} s.e., bootstrap 5–95% "
                f"[{e['q05']:.3f}, {e['q95']:.3f}], R² {e['r2']:.3f})")

    lines = [
        "## Scaling laws",
        "",
        f"An IsoFLOP grid of anthropic_2024 SAEs on this store (experiments/scaling_laws.py: "
        f"{result['programs']} programs of {result['settings']['lrs']} learning rates each, "
        f"{len(result['frontier'])} compute levels over {fits['loss']['decades']:.1f} decades). "
        f"At the compute-optimal split: {law('loss', 'held-out loss (MSE + λ·L1)')}; "
        f"{law('d_sae', 'features')}; {law('steps', 'steps')}; "
        f"{law('lr', 'learning rate')}.",
        "",
    ]
    for name in ("loss_vs_compute.png", "optimal_shape.png"):
        figure = os.path.join(workdir, "scaling_laws", name)
        if os.path.exists(figure):
            shutil.copy(figure, os.path.join(report_dir, f"scaling_{name}"))
            lines += [f"![{name[:-4]}](report/scaling_{name})", ""]
    return lines
