"""The browser stage: interpret an SAE's features and write the static browser in W/browser.

The site opens from disk (file://, no server). Browsers refuse fetch() of local files, so data
files are scripts that hand their JSON to a global:

  index.html  feature.html  browser.css  index.js  feature.js   static assets (copied)
  features_index.js   window.MONOSEM_INDEX = {...}: one compact row per feature
  features_index.json the same index as plain JSON, for programs (the report reads it)
  vocab.js            window.MONOSEM_VOCAB = [...]: token id -> text
  data/<id>.js        monosemFeature({...}): one feature, loaded lazily by feature.html#<id>

Corpus text only ever reaches the page through textContent (never innerHTML), and `<` is escaped
inside the data files as well, so no text can end a script or form markup.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import math
import os
import shutil
import time

import ml_collections
import numpy as np
from absl import logging

from monosem_jax import metrics_io, stage_config, workdir_lock
from monosem_jax.analysis import features as features_lib
from monosem_jax.analysis import interpret as interp
from monosem_jax.corpus import dataset, tokenizer
from monosem_jax.gpt import artifact as gpt_artifact
from monosem_jax.gpt import model as gpt_model
from monosem_jax.sae import artifact as sae_artifact

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
STATIC_FILES = ("index.html", "feature.html", "browser.css", "index.js", "feature.js")
INDEX_COLUMNS = ("id", "label", "density", "max_act", "f1", "concept", "search")
LABEL_TOKENS = 3  # most frequent top-example tokens in a feature's fallback label


def js_literal(obj) -> str:
    """JSON as a JS expression that is safe anywhere: ASCII only, and no `<` to close a tag."""
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")


def round_sig(x, digits: int) -> np.ndarray:
    """x rounded to `digits` significant digits (non-finite values become 0)."""
    x = np.asarray(x, np.float64)
    ok = np.isfinite(x) & (x != 0)
    safe = np.where(ok, np.abs(x), 1.0)
    scale = 10.0 ** (digits - 1 - np.floor(np.log10(safe)))
    return np.where(ok, np.round(x * scale) / scale, 0.0)


def _num(x: float, digits: int = 4) -> float | None:
    x = float(x)
    return float(f"{x:.{digits}g}") if math.isfinite(x) else None


def _compact(values: list[float]) -> list:
    return [v if v else 0 for v in values]  # "0" rather than "0.0": most context slots are 0


def vocab_strings(tok, size: int) -> list[str]:
    """Display text of each token id (a byte-level piece may decode to U+FFFD alone)."""
    return [tok.decode([i], skip_special_tokens=False) for i in range(size)]


def _examples(
    windows_WL: np.ndarray, index_X, ctx_XC, act_X, cfg: interp.InterpretConfig
) -> list[dict | None]:
    """Each example's in-window tokens, the feature's activations on them, and its own slot
    among them (None where index is -1: no example)."""
    tokens_XC = interp.context_tokens(windows_WL, index_X, cfg)
    inside_XC = tokens_XC >= 0
    acts_XC = round_sig(ctx_XC.astype(np.float32), 3)
    focus_X = inside_XC[:, : cfg.context_before].sum(1)
    return [
        {
            "act": act,
            "focus": focus,
            "tokens": tokens_C[inside_C].tolist(),
            "acts": _compact(acts_C[inside_C].tolist()),
        }
        if index >= 0
        else None
        for index, act, focus, tokens_C, acts_C, inside_C in zip(
            index_X.tolist(),
            round_sig(act_X, 4).tolist(),
            focus_X.tolist(),
            tokens_XC,
            acts_XC,
            inside_XC,
            strict=True,
        )
    ]


def top_token_label(vocab: list[str], top_tokens: np.ndarray) -> tuple[str, list[str]]:
    """(label from the most frequent example tokens, all distinct example tokens by frequency)."""
    counts = collections.Counter(vocab[t] for t in top_tokens.tolist() if 0 <= t < len(vocab))
    ranked = [text for text, _ in counts.most_common()]
    return " · ".join(json.dumps(t, ensure_ascii=False) for t in ranked[:LABEL_TOKENS]), ranked


def feature_record(
    i: int,
    stats: interp.FeatureStats,
    effects: interp.LogitEffects | None,
    windows_WL: np.ndarray,
    cfg: interp.InterpretConfig,
    vocab: list[str],
    concepts: list[str] | None,
    label_min_f1: float,
) -> tuple[dict, list]:
    """Feature i's page data and its index row (see INDEX_COLUMNS)."""
    # One pass over the top examples and every quantile bin's examples together.
    num_k = stats.top.index_FK.shape[1]
    _, num_q, num_p = stats.quantile_index_FQK.shape
    examples = _examples(
        windows_WL,
        np.concatenate([stats.top.index_FK[i], stats.quantile_index_FQK[i].ravel()]),
        np.concatenate(
            [stats.top.ctx_FKC[i], stats.quantile_ctx_FQKC[i].reshape(num_q * num_p, -1)]
        ),
        np.concatenate([stats.top.act_FK[i], stats.quantile_act_FQK[i].ravel()]),
        cfg,
    )
    top = [ex for ex in examples[:num_k] if ex is not None]
    quantiles = []
    for q in range(num_q):
        shown = examples[num_k + q * num_p : num_k + (q + 1) * num_p]
        if shown[0] is not None:
            low, high = stats.quantile_range_FQ2[i, q].tolist()
            quantiles.append(
                {
                    "low": _num(low),
                    "high": _num(high),
                    "examples": [ex for ex in shown if ex is not None],
                }
            )
    hist_I = stats.hist_FI[i]
    occupied = np.nonzero(hist_I)[0]
    lo, hi = (occupied[0], occupied[-1] + 1) if occupied.size else (0, 0)
    top_index = stats.top.index_FK[i][stats.top.index_FK[i] >= 0]
    focus_K = windows_WL[top_index // windows_WL.shape[1], top_index % windows_WL.shape[1]]
    label, ranked_tokens = top_token_label(vocab, focus_K)
    concept, f1 = None, None
    if stats.f1_FC is not None and concepts:
        best = int(np.argmax(stats.f1_FC[i]))
        concept, f1 = concepts[best], _num(stats.f1_FC[i, best], 3)
        if f1 == 0:  # matches nothing (e.g. a dead feature): name no concept
            concept = None
        elif f1 >= label_min_f1:
            label = f"{concept} (F1 {f1:.2f}): {label}"
    if stats.count_F[i] == 0:
        label = "(dead: never active)"
    logits = None
    if effects is not None:
        pairs = lambda ids, vals: [
            list(p) for p in zip(ids.tolist(), round_sig(vals, 3).tolist(), strict=True)
        ]
        logits = {
            "up": pairs(effects.up_id_FK[i], effects.up_val_FK[i]),
            "down": pairs(effects.down_id_FK[i], effects.down_val_FK[i]),
        }
    record = {
        "id": i,
        "label": label,
        "density": _num(stats.density_F[i]),
        "max_act": _num(stats.max_act_F[i]),
        "mean_act": _num(stats.mean_act_F[i]),
        "count": int(stats.count_F[i]),
        "tokens": stats.tokens,
        "concept": concept,
        "f1": f1,
        "hist": {
            "edges": round_sig(stats.hist_edges_I1[lo : hi + 1], 4).tolist() if hi > lo else [],
            "counts": hist_I[lo:hi].tolist(),
        },
        "top": top,
        "quantiles": quantiles,
        "logits": logits,
    }
    search = " ".join([label, concept or ""] + ranked_tokens).lower()
    row = [i, label, record["density"], record["max_act"], f1, concept, search]
    return record, row


def write_site(out_dir: str, meta: dict, records, vocab: list[str]) -> int:
    """Writes the static site for (record, index row) pairs into out_dir; returns feature pages."""
    os.makedirs(os.path.join(out_dir, "data"), exist_ok=True)
    for name in STATIC_FILES:
        shutil.copyfile(os.path.join(STATIC_DIR, name), os.path.join(out_dir, name))
    rows = []
    for record, row in records:
        with open(os.path.join(out_dir, "data", f"{int(record['id'])}.js"), "w") as f:
            f.write(f"monosemFeature({js_literal(record)});\n")
        rows.append(row)
    index = dict(meta, columns=list(INDEX_COLUMNS), rows=rows)
    with open(os.path.join(out_dir, "features_index.js"), "w") as f:
        f.write(f"window.MONOSEM_INDEX = {js_literal(index)};\n")
    metrics_io.write_json_atomic(os.path.join(out_dir, "features_index.json"), index)
    with open(os.path.join(out_dir, "vocab.js"), "w") as f:
        f.write(f"window.MONOSEM_VOCAB = {js_literal(vocab)};\n")
    return len(rows)


def read_feature_record(browser_dir: str, feature: int) -> dict | None:
    """One feature's record as the browser wrote it (`data/<id>.js`: monosemFeature({...}))."""
    path = os.path.join(browser_dir, "data", f"{feature}.js")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read()
    return json.loads(text[text.index("(") + 1 : text.rindex(")")])


def read_index(browser_dir: str) -> dict | None:
    """The browser's index (`features_index.json`, the plain-JSON twin of the page's
    `features_index.js`), or None where the browser has not run."""
    path = os.path.join(browser_dir, "features_index.json")
    return metrics_io.read_json(path) if os.path.exists(path) else None


@dataclasses.dataclass(frozen=True)
class BrowseConfig:
    """Validated settings of `monosem-browse` (configs/browse/default.py documents each)."""

    sae_name: str = ""
    split: str = "eval"
    max_tokens: int = 131072
    batch_size: int = 16
    max_features: int = 0
    top_n: int = 20
    context_before: int = 24
    context_after: int = 8
    quantile_bins: int = 4
    per_bin: int = 3
    sample_size: int = 32
    logit_top: int = 10
    label_min_f1: float = 0.3

    def __post_init__(self):
        stage_config.path_component("sae_name", self.sae_name, allow_empty=True)  # W/sae/<name>
        stage_config.one_of("split", self.split, dataset.SPLITS)
        stage_config.positive(
            self, ("top_n", "sample_size", "quantile_bins", "per_bin", "logit_top", "batch_size")
        )
        stage_config.non_negative(self, ("context_before", "context_after"))
        stage_config.non_negative(self, ("max_tokens", "max_features"), note="0 = all")
        stage_config.check(0 <= self.label_min_f1 <= 1, "label_min_f1", self.label_min_f1,
                           "an F1 in [0, 1]")

    def interpret(self) -> interp.InterpretConfig:
        """The interpretation library's settings."""
        return interp.InterpretConfig(
            top_n=self.top_n,
            context_before=self.context_before,
            context_after=self.context_after,
            quantile_bins=self.quantile_bins,
            per_bin=self.per_bin,
            sample_size=self.sample_size,
            logit_top=self.logit_top,
        )


def browse_config_from(config: ml_collections.ConfigDict) -> BrowseConfig:
    """The frozen BrowseConfig of a ConfigDict (one clear ValueError per bad value)."""
    return stage_config.from_config(BrowseConfig, config)


def _logit_effects(model_cfg, lm_params, sae, num_features, vocab_size, top):
    """Logit effects where the hook lives in the residual basis (None for hook_mlp_post)."""
    if sae.hook.endswith("hook_mlp_post") or sae.sae_cfg.d != model_cfg.d_model:
        return None
    w_u_DV = interp.unembedding(model_cfg, lm_params)[:, :vocab_size]
    scale_D = lm_params["ln_final"].get("scale")
    w_dec_FD = np.asarray(sae.params["w_dec_FD"])[:num_features]
    return interp.logit_effects(
        w_dec_FD, w_u_DV, None if scale_D is None else np.asarray(scale_D), top
    )


def _replace_dir(tmp_dir: str, out_dir: str) -> None:
    """Swaps the finished site in, so a crash never leaves a half-written browser behind."""
    old = f"{out_dir}.old{os.getpid()}"
    if os.path.exists(out_dir):
        os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    shutil.rmtree(old, ignore_errors=True)


@workdir_lock.writer(lambda config: "browser")
def browse(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Interprets every feature of W/sae/<sae_name> and writes the browser to W/browser."""
    t_start = time.time()
    browse_cfg = browse_config_from(config)
    cfg = browse_cfg.interpret()
    out_dir = os.path.join(workdir, "browser")
    summary_path = os.path.join(out_dir, "summary.json")
    recorded = dataclasses.asdict(browse_cfg)
    config_path = os.path.join(out_dir, "config.json")
    if (
        os.path.exists(summary_path)
        and os.path.exists(config_path)
        and (metrics_io.read_json(config_path) == recorded)
    ):
        logging.info("browser for %s already written; nothing to do", browse_cfg.sae_name)
        return metrics_io.finish_summary(summary_path, metrics_io.read_json(summary_path))
    sae = sae_artifact.load_sae(workdir, browse_cfg.sae_name)  # "" = the pipeline's SAE
    model_cfg, lm_params, _ = gpt_artifact.load_trained(workdir)
    gpt_model.check_hooks(model_cfg, [sae.hook])
    data_dir = os.path.join(workdir, "data")
    length = model_cfg.context_len
    windows_WL = features_lib.windows(workdir, browse_cfg.split, length, browse_cfg.max_tokens)
    if windows_WL.shape[0] == 0:
        raise ValueError(
            f"the {browse_cfg.split} split has fewer than {length} tokens; use more data"
        )
    meta = dataset.load_meta(data_dir)
    labels_N = dataset.load_split(data_dir, browse_cfg.split).labels_N
    concepts = meta.get("concepts") if labels_N is not None else None
    labels_WL = None
    if concepts:
        labels_WL = np.asarray(labels_N[: windows_WL.size]).reshape(windows_WL.shape)
    tok = tokenizer.load_tokenizer(os.path.join(workdir, "tokenizer.json"))
    vocab = vocab_strings(tok, min(tok.get_vocab_size(), model_cfg.vocab_size))

    t_interp = time.time()
    progress = _Progress(windows_WL.shape[0], length)
    stats = interp.interpret(
        model_cfg,
        lm_params,
        sae,
        windows_WL,
        labels_WL,
        len(concepts) if concepts else None,
        cfg,
        browse_cfg.batch_size,
        browse_cfg.max_features,
        progress,
    )
    num_features = stats.count_F.shape[0]
    effects = _logit_effects(model_cfg, lm_params, sae, num_features, len(vocab), cfg.logit_top)
    interpret_s = time.time() - t_interp

    t_write = time.time()
    tmp_dir = f"{out_dir}.tmp{os.getpid()}"
    # Sites a killed or failed (full disk) earlier run left half-written: this process holds
    # the browser lock, so no other writer is using them.
    for suffix in (".tmp*", ".old*"):
        for stale in glob.glob(glob.escape(out_dir) + suffix):
            shutil.rmtree(stale, ignore_errors=True)
    records = (
        feature_record(
            i, stats, effects, windows_WL, cfg, vocab, concepts, browse_cfg.label_min_f1
        )
        for i in range(num_features)
    )
    site_meta = {
        "sae": sae.name,
        "hook": sae.hook,
        "tokens": stats.tokens,
        "labelled": bool(concepts),
    }
    written = write_site(tmp_dir, site_meta, records, vocab)
    labelled = 0
    if stats.f1_FC is not None and stats.f1_FC.size:
        labelled = int((stats.f1_FC.max(1) >= browse_cfg.label_min_f1).sum())
    summary = {
        "sae_name": sae.name,
        "hook": sae.hook,
        "features_written": written,
        "pages": written + 1,  # feature pages (feature.html#<id>) and the index
        "tokens": stats.tokens,
        "alive_features": int((stats.count_F > 0).sum()),
        "concept_labelled_features": labelled,
        "logit_effects": effects is not None,
        "interpret_s": interpret_s,
        "write_s": time.time() - t_write,
        "tokens_per_s": stats.tokens / max(interpret_s, 1e-9),
        "index": os.path.join(out_dir, "index.html"),
        "wall_s": time.time() - t_start,
    }
    metrics_io.write_json_atomic(os.path.join(tmp_dir, "config.json"), recorded)
    metrics_io.write_json_atomic(os.path.join(tmp_dir, "summary.json"), summary)
    _replace_dir(tmp_dir, out_dir)
    return metrics_io.finish_summary(summary_path, summary)


class _Progress:
    """Logs windows/s and an ETA every ~10 s of the pass."""

    def __init__(self, total_windows: int, length: int):
        self.total, self.length = total_windows, length
        self.start = self.last = time.time()

    def __call__(self, done: int) -> None:
        now = time.time()
        if now - self.last < 10 and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        logging.info(
            "browse: %d/%d windows, %.0f tokens/s, ETA %s",
            done,
            self.total,
            rate * self.length,
            metrics_io.format_eta((self.total - done) / max(rate, 1e-9)),
        )
