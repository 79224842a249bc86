"""The run at a glance: `W/report.md` with its plots in `W/report/`.

It reads what the earlier stages wrote (metrics.jsonl files, the eval JSONs, the browser's
per-feature records) and computes nothing new: LM loss curve, SAE training curves (and the
sweep frontier when a sweep exists), the feature density histogram, SAEBench's core metrics
and a concept table per evaluated SAE (best feature and unit F1, probe ceiling, k-sparse
probes), and five example features with their top contexts.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time

import ml_collections

from monosem_jax import metrics_io, report_experiments
from monosem_jax.analysis import evaluate
from monosem_jax.browser import write as browser_write
from monosem_jax.corpus import tokenizer

MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>#|"})


def md_escape(text: str) -> str:
    """Corpus text as literal Markdown (no markup, no HTML, newlines shown as ⏎)."""
    return text.replace("\n", "⏎").translate(MD_SPECIAL)


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _plot_curves(path: str, series: dict[str, list[tuple[int, float]]], title: str) -> bool:
    """One panel per named series of (step, value); False when there is nothing to plot."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2), squeeze=False)
    for ax, (name, points) in zip(axes[0], series.items(), strict=True):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".")
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _points(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if r.get(key) is not None]


def example_features(eval_json: dict, browser_dir: str, count: int = 5) -> list[dict]:
    """The best-F1 feature of each concept first (most precise concepts first), then the densest
    other features, among those the browser wrote."""
    chosen = []
    table = sorted(eval_json.get("concept_table") or [], key=lambda r: -r["f1"])
    candidates = [r["feature"] for r in table]
    index = browser_write.read_index(browser_dir)
    if index is not None:  # then the densest features of the browser's index
        column = {name: i for i, name in enumerate(index["columns"])}
        rows = sorted(index["rows"], key=lambda r: -(r[column["density"]] or 0.0))
        candidates += [r[column["id"]] for r in rows]
    for feature in candidates:
        record = browser_write.read_feature_record(browser_dir, int(feature))
        if (
            record is not None
            and record.get("top")
            and record["id"] not in {c["id"] for c in chosen}
        ):
            chosen.append(record)
        if len(chosen) == count:
            break
    return chosen


def eval_summaries(workdir: str, first: str) -> list[dict]:
    """Every SAE evaluation in W/eval/ (`<sae>.json`): the named one first, then by name."""
    found = []
    for path in sorted(glob.glob(os.path.join(workdir, "eval", "*.json"))):
        summary = metrics_io.read_json(path)
        if isinstance(summary, dict) and "sae_name" in summary and "concept_table" in summary:
            found.append(summary)
    return sorted(found, key=lambda e: (e["sae_name"] != first, e["sae_name"]))


def _num(value, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)  # "–": absent (or an older eval JSON)


def concept_table_lines(eval_json: dict) -> list[str]:
    """One SAE's concept table: best feature and unit F1, the probe ceiling, k-sparse probes."""
    table = eval_json["concept_table"]
    ks = sorted({int(key.rsplit("_k", 1)[1]) for row in table for key in row
                 if key.startswith("sparse_probe_f1_k")})
    lines = [
        f"### `{eval_json['sae_name']}` ({eval_json.get('variant', '?')}, "
        f"`{eval_json.get('hook', '?')}`)",
        "",
        f"Recovered (F1 ≥ 0.8): features {_num(eval_json.get('concepts_recovered_fraction'))}, "
        f"neurons/residual dims {_num(eval_json.get('concepts_recovered_fraction_neuron'))}. "
        f"Feature beats unit on {_num(eval_json.get('concepts_feature_beats_unit'), 'd')} of "
        f"{len(table)} concepts; the 1-sparse probe reaches ≥ 0.9 of the ceiling on "
        f"{_num(eval_json.get('concepts_sparse_probe_k1_over_ceiling_ge_0_9'), 'd')} of "
        f"{_num(eval_json.get('concepts_probed'), 'd')} probed (probes: "
        f"{_num(eval_json.get('probe_train_tokens'), ',')} train / "
        f"{_num(eval_json.get('probe_test_tokens'), ',')} held-out tokens).",
        "",
        "| concept | base rate | feature | F1 (P / R) | best unit | F1 | probe ceiling | "
        + "".join(f"k={k} | " for k in ks) + "k=1 / ceiling |",
        "|---|---|---|---|---|---|---|" + "---|" * len(ks) + "---|",
    ]
    for r in table:
        lines.append(
            f"| {r['concept']} | {r['base_rate']:.3f} | {r['feature']} | "
            f"{r['f1']:.2f} ({r['precision']:.2f} / {r['recall']:.2f}) | "
            f"{md_escape(str(r['neuron_unit']))} | {r['neuron_f1']:.2f} | "
            f"{_num(r.get('probe_f1'))} | "
            + "".join(f"{_num(r.get(f'sparse_probe_f1_k{k}'))} | " for k in ks)
            + f"{_num(r.get('sparse_probe_over_ceiling_k1'))} |"
        )
    return lines + [""]


# SAEBench's core metrics shown per evaluated SAE: (column, group, key, format).
SAEBENCH_COLUMNS = (
    ("KL score", "model_behavior_preservation", "kl_div_score", ".3f"),
    ("CE score", "model_performance_preservation", "ce_loss_score", ".3f"),
    ("EV", "reconstruction_quality", "explained_variance", ".3f"),
    ("MSE", "reconstruction_quality", "mse", ".4g"),
    ("cos", "reconstruction_quality", "cossim", ".3f"),
    ("L2 ratio", "shrinkage", "l2_ratio", ".3f"),
    ("rel. bias", "shrinkage", "relative_reconstruction_bias", ".3f"),
    ("L0", "sparsity", "l0", ".1f"),
    ("L1", "sparsity", "l1", ".3g"),
    ("alive", "misc_metrics", "frac_alive", ".3f"),
    (">1%", "misc_metrics", "freq_over_1_percent", ".3f"),
    (">10%", "misc_metrics", "freq_over_10_percent", ".3f"),
    ("max dec. cos", "misc_metrics", "average_max_decoder_cosine_sim", ".3f"),
)


def saebench_table_lines(summaries: list[dict]) -> list[str]:
    """SAEBench's core metrics, one row per evaluated SAE ("–" where an older eval lacks them)."""
    lines = [
        "| SAE | " + " | ".join(c[0] for c in SAEBENCH_COLUMNS) + " |",
        "|---|" + "---|" * len(SAEBENCH_COLUMNS),
    ]
    for summary in summaries:
        core = summary.get("saebench_core") or {}
        cells = [_num((core.get(group) or {}).get(key), spec)
                 for _, group, key, spec in SAEBENCH_COLUMNS]
        lines.append(f"| `{summary['sae_name']}` | " + " | ".join(cells) + " |")
    return lines + [""]


def loss_by_position_line(loss_by_position: dict[str, float]) -> str:
    """'Loss by window position: 0-4: 1.75, 4-16: 0.98, ...' in position order (a summary's
    keys come back sorted as text: '16-32' before '4-16')."""
    buckets = sorted(loss_by_position.items(), key=lambda kv: int(kv[0].split("-")[0]))
    return "Loss by window position: " + ", ".join(f"{k}: {v:.2f}" for k, v in buckets) + "."


def _context_line(tok, example: dict) -> str:
    """A top context as Markdown: the token at the focus in bold, the rest escaped text."""
    pieces = [tok.decode([int(t)]) for t in example["tokens"]]
    focus = example["focus"]
    before = md_escape("".join(pieces[:focus]))
    after = md_escape("".join(pieces[focus + 1 :]))
    word = pieces[focus]
    space = " " if word[:1].isspace() else ""
    return f"{before}{space}**{md_escape(word.strip()) or '␣'}**{after} ({example['act']:.2f})"


def write_report(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Writes W/report.md and W/report/*.png from the stages' outputs."""
    t_start = time.time()
    cfg = evaluate.eval_config_from(config)  # the report shows the eval stage's SAE
    name = metrics_io.resolve_sae_name(workdir, cfg.sae_name)
    report_dir = os.path.join(workdir, "report")
    os.makedirs(report_dir, exist_ok=True)
    eval_path = os.path.join(workdir, "eval", f"{name}.json")
    if not os.path.exists(eval_path):
        raise FileNotFoundError(f"no evaluation {eval_path}; run monosem-eval first")
    eval_json = metrics_io.read_json(eval_path)
    lines = [f"# Run report: {os.path.basename(os.path.abspath(workdir))}", ""]

    lm = metrics_io.read_json(os.path.join(workdir, "lm", "summary.json"))
    lm_rows = read_jsonl(os.path.join(workdir, "lm", "metrics.jsonl"))
    lines += [
        "## Language model",
        "",
        f"{lm['params']:,} parameters, {lm['steps']} steps, {lm['tokens']:,} tokens: "
        f"eval loss **{lm['eval_loss']:.3f}** nats against a unigram entropy of "
        f"{lm['unigram_entropy']:.3f} ({lm['eval_loss'] / lm['unigram_entropy']:.2f}×).",
        "",
    ]
    if lm.get("topic_context_gain") is not None:
        lines += [
            f"Topic context gain **{lm['topic_context_gain']:.3f}** nats: the loss on a story's "
            f"topic words is {lm['topic_loss_own']:.3f} after its own opening and "
            f"{lm['topic_loss_spliced']:.3f} after another topic's opening "
            f"({lm['topic_scored_tokens']} topic-word tokens, {lm['topic_pairs']} pairs).",
            "",
        ]
    if lm.get("loss_by_position"):
        lines += [loss_by_position_line(lm["loss_by_position"]), ""]
    if _plot_curves(
        os.path.join(report_dir, "lm_loss.png"),
        {"train loss": _points(lm_rows, "loss"), "eval loss": _points(lm_rows, "eval_loss")},
        "LM",
    ):
        lines += ["![LM loss](report/lm_loss.png)", ""]

    sae = metrics_io.read_json(os.path.join(workdir, "sae", name, "summary.json"))
    sae_rows = read_jsonl(os.path.join(workdir, "sae", name, "metrics.jsonl"))
    lines += [
        f"## SAE `{name}`",
        "",
        f"{sae['variant']}, {sae['d_sae']} features on `{eval_json['hook']}`, "
        f"{sae['tokens']:,} tokens. Held out: explained variance "
        f"**{sae['explained_variance']:.3f}**, L0 **{sae['l0']:.1f}**, dead "
        f"{sae['dead_fraction']:.3f}, dense {sae['dense_fraction']:.3f}.",
        "",
        f"Spliced into the LM: CE {eval_json['ce_loss_clean']:.3f} clean, "
        f"{eval_json['ce_loss_spliced']:.3f} spliced, {eval_json['ce_loss_zero']:.3f} "
        f"zero-ablated: **{eval_json['ce_loss_recovered']:.3f}** of the loss recovered; "
        f"KL {eval_json['kl_spliced']:.3f}. {eval_json['neuron_corr_below_0_3']:.0%} of "
        "live features correlate below 0.3 with every MLP neuron of their layer.",
        "",
    ]
    evaluated = eval_summaries(workdir, name)
    if any(e.get("saebench_core") for e in evaluated):
        lines += [
            "SAEBench core metrics (held out, hook units; scores are 1 for a perfect splice and 0 "
            "for zero-ablation; rel. bias < 1 is shrinkage; max dec. cos: each latent's highest "
            "decoder cosine with another latent, averaged):",
            "",
            *saebench_table_lines(evaluated),
        ]
    if _plot_curves(
        os.path.join(report_dir, "sae_curves.png"),
        {
            "explained variance": _points(sae_rows, "explained_variance"),
            "L0": _points(sae_rows, "l0"),
            "mse": _points(sae_rows, "mse"),
        },
        f"SAE {name} (training batches)",
    ):
        lines += ["![SAE training](report/sae_curves.png)", ""]
    for frontier in sorted(glob.glob(os.path.join(workdir, "sweep", "*", "frontier.png"))):
        sweep = os.path.basename(os.path.dirname(frontier))
        shutil.copy(frontier, os.path.join(report_dir, f"frontier_{sweep}.png"))
        lines += [f"Sweep `{sweep}` frontier:", "", f"![frontier](report/frontier_{sweep}.png)", ""]
    density = os.path.join(workdir, "eval", f"{name}_density.png")
    if os.path.exists(density):
        shutil.copy(density, os.path.join(report_dir, "density.png"))
        lines += ["![feature density](report/density.png)", ""]

    labelled = [e for e in evaluated if e.get("concept_table")]
    if labelled:
        lines += [
            "## Planted concepts: features, units and probes",
            "",
            "Per concept: the best single SAE feature and the best single MLP neuron / residual "
            "dimension as threshold detectors (thresholds chosen on the tokens scored); a "
            "logistic probe on the hook's activations, the linear ceiling; and SAEBench-style "
            "k-sparse probes on the k latents with the largest class-mean difference. Probes "
            "train on part of the eval windows and are scored (F1) on the rest.",
            "",
        ]
        for summary in labelled:
            lines += concept_table_lines(summary)

    lines += report_experiments.scaling_lines(workdir, report_dir)
    lines += report_experiments.completeness_lines(workdir, report_dir)
    browser_dir = os.path.join(workdir, "browser")
    examples = example_features(eval_json, browser_dir)
    if examples:
        tok = tokenizer.load_tokenizer(os.path.join(workdir, "tokenizer.json"))
        lines += ["## Five example features", "", "Open `browser/index.html` for all of them.", ""]
        for record in examples:
            concept = (
                f", matches **{record['concept']}** (F1 {record['f1']:.2f})"
                if record.get("concept")
                else ""
            )
            lines += [
                f"### Feature {record['id']}",
                "",
                f"density {record['density']:.4f}, max activation "
                f"{record['max_act']:.2f}{concept}.",
                "",
            ]
            lines += [f"- {_context_line(tok, ex)}" for ex in record["top"][:4]]
            lines.append("")
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write("\n".join(lines))
    summary = {
        "report": os.path.join(workdir, "report.md"),
        "sae_name": name,
        "example_features": [r["id"] for r in examples],
        "wall_s": time.time() - t_start,
    }
    return metrics_io.finish_summary(os.path.join(report_dir, "summary.json"), summary)
