"""Feature search (Scaling Monosemanticity, "Searching for specific features"): which SAE
features fire on a prompt, and which fire on prompts with a concept but not on prompts without.

Activations are the *reported* ones of `sae.artifact.feature_acts` (decoder norms folded in), at
each scored token: all of a prompt's tokens but the EOT it starts with (the attention sink, never
seen by the SAE), the padding and, for a (context, text) prompt, the context. All SAE
activations are >= 0 (every encoder ends in a ReLU, TopK or a jump), so masked positions are
zeros and never win a max. One jitted function per call shape runs the LM, the SAE and the
ranking; lengths are padded to a multiple of LENGTH_BUCKET so few shapes compile.

Contrastive scores (`SCORES`) start from each feature's max activation over each prompt's scored
tokens (a concept lives on a few tokens: a mean over the prompt would dilute it by length):

  f1             best F1, over thresholds t, of "max > t" as a detector of the "with" prompts
                 (the eval's concept statistic, on prompts instead of tokens)      [default]
  fire_diff      fraction of "with" prompts where it fires (> 0) - that of "without" ones
  max_diff       mean over "with" prompts - mean over "without" prompts (reported units)
  norm_max_diff  max_diff / the feature's largest activation on any of the prompts

Why f1: experiments/feature_search.py searches each planted concept with word prompts (in their
story context) from fresh stories and grades the top 3 by their token F1 on the eval split. On
the default pipeline's SAE the best of f1's top 3 reached 0.91 of the best single feature's F1
on average (fire_diff 0.89, norm_max_diff 0.86, max_diff 0.54). max_diff ranks by magnitude:
its picks were strong features of a few of the concept's words (low recall, low token F1);
f1 and fire_diff do not care for scale, and f1 also weighs firing on "without" prompts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from monosem_jax import metrics_io, stage_config
from monosem_jax.gpt import model as gpt_model
from monosem_jax.intervene import splice
from monosem_jax.sae import artifact as sae_artifact

SEPARATOR = "||"  # between the prompts of --config.with_prompts / without_prompts
LENGTH_BUCKET = 16  # prompt lengths are padded up to a multiple of this: fewer compiled shapes

# A prompt is its text, or (context, text): the context runs through the LM first but only the
# text's tokens are searched. Features of a small LM can depend on context and position (on the
# default model some name features stay silent on a name in a short prompt and fire on the same
# name 50 tokens into a story), so a search can give its prompts the context they occur in.
Prompt = str | tuple[str, str]


@dataclasses.dataclass(frozen=True)
class SearchStatic:
    """Hashable settings of the jitted functions (the LM's arrays and the SAE travel as
    arguments)."""

    model_cfg: gpt_model.GPTConfig
    top_n: int
    batch_size: int = 0  # contrastive: prompts per forward pass (lax.map over chunks)
    score: str = "f1"


@dataclasses.dataclass(frozen=True)
class PromptFeatures:
    """One prompt's strongest features: per token, and overall by max over its tokens."""

    prompt: Prompt
    tokens: tuple[str, ...]  # the scored tokens as text (no leading EOT, no context)
    token_ids_NK: np.ndarray  # [N tokens, n] feature ids per token, strongest first
    token_acts_NK: np.ndarray  # [N tokens, n] their activations
    top_ids_K: np.ndarray  # [n] features with the largest max activation over the prompt
    top_max_K: np.ndarray  # [n] that max
    top_mean_K: np.ndarray  # [n] their mean activation over the prompt's tokens

    def to_json(self) -> dict:
        return {
            "prompt": self.prompt,
            "tokens": [
                {"token": t, "features": _pairs(ids, acts)}
                for t, ids, acts in zip(self.tokens, self.token_ids_NK, self.token_acts_NK,
                                        strict=True)
            ],
            "top": [
                {"feature": int(f), "max": _num(a), "mean": _num(m)}
                for f, a, m in zip(self.top_ids_K, self.top_max_K, self.top_mean_K, strict=True)
                if a > 0
            ],
        }


@dataclasses.dataclass(frozen=True)
class Contrast:
    """Features ranked by a contrastive score, best first."""

    score_name: str
    feature_N: np.ndarray  # [n] feature ids
    score_N: np.ndarray  # [n]
    pos_N: np.ndarray  # [n] mean over "with" prompts of the max activation
    neg_N: np.ndarray  # [n] the same over "without" prompts

    def to_json(self) -> list[dict]:
        return [
            {"feature": int(f), "score": _num(s), "with": _num(p), "without": _num(q)}
            for f, s, p, q in zip(self.feature_N, self.score_N, self.pos_N, self.neg_N,
                                  strict=True)
        ]


def _num(x) -> float:
    return float(f"{float(x):.6g}")  # float32 precision, not 17 noisy digits in the JSON


def _pairs(ids, acts) -> list[dict]:
    return [{"feature": int(f), "act": _num(a)} for f, a in zip(ids, acts, strict=True) if a > 0]


# -------------------------------------------------------------------------- pure functions


def valid_positions(scored_P2: jax.Array, length: int) -> jax.Array:
    """Bool [P, L]: positions [start, end) of each prompt's scored text (never the leading EOT,
    a context or the padding)."""
    pos_L = jnp.arange(length)
    return (pos_L[None, :] >= scored_P2[:, :1]) & (pos_L[None, :] < scored_P2[:, 1:])


def prompt_acts(st: SearchStatic, lm_params, sae, tokens_PL, scored_P2) -> jax.Array:
    """Reported activations [P, L, F] at the SAE's hook, zero outside the scored positions."""
    _, captured = gpt_model.forward(st.model_cfg, lm_params, tokens_PL, capture=[sae.hook])
    a_PLF = sae_artifact.feature_acts(sae, captured[sae.hook])
    return jnp.where(valid_positions(scored_P2, tokens_PL.shape[1])[..., None], a_PLF, 0.0)


@functools.partial(jax.jit, static_argnames="st")
def _summarise(lm_params, sae, tokens_PL, scored_P2, st: SearchStatic):
    a_PLF = prompt_acts(st, lm_params, sae, tokens_PL, scored_P2)
    tok_acts_PLK, tok_ids_PLK = jax.lax.top_k(a_PLF, st.top_n)
    count_P = jnp.maximum(scored_P2[:, 1] - scored_P2[:, 0], 1).astype(jnp.float32)
    mean_PF = a_PLF.sum(1) / count_P[:, None]
    top_max_PK, top_ids_PK = jax.lax.top_k(a_PLF.max(1), st.top_n)
    top_mean_PK = jnp.take_along_axis(mean_PF, top_ids_PK, axis=1)
    return tok_ids_PLK, tok_acts_PLK, top_ids_PK, top_max_PK, top_mean_PK


def prompt_maxima(st: SearchStatic, lm_params, sae, tokens_PL, scored_P2) -> jax.Array:
    """Max activation over each prompt's tokens [P, F], `st.batch_size` prompts per forward."""
    num, length = tokens_PL.shape
    chunks = (tokens_PL.reshape(-1, st.batch_size, length),
              scored_P2.reshape(-1, st.batch_size, 2))
    max_CBF = jax.lax.map(
        lambda c: prompt_acts(st, lm_params, sae, *c).max(1), chunks
    )
    return max_CBF.reshape(num, -1)


def _mean_over(w_P: jax.Array, v_PF: jax.Array) -> jax.Array:
    return (w_P @ v_PF) / jnp.maximum(w_P.sum(), 1.0)


def max_diff(max_PF, pos_P, neg_P):
    return _mean_over(pos_P, max_PF) - _mean_over(neg_P, max_PF)


def norm_max_diff(max_PF, pos_P, neg_P):
    # Features silent on every prompt score 0, not 0/0.
    return max_diff(max_PF, pos_P, neg_P) / jnp.maximum(max_PF.max(0), 1e-6)


def fire_diff(max_PF, pos_P, neg_P):
    fires_PF = (max_PF > 0).astype(jnp.float32)
    return _mean_over(pos_P, fires_PF) - _mean_over(neg_P, fires_PF)


def best_f1(max_PF, pos_P, neg_P):
    # Prompt-level F1 of "max > t" as a detector of the "with" prompts, at the best threshold t
    # (the eval's token-level statistic, one level up). Sorting each feature's prompt maxima
    # descending, the detector at the k-th value catches prompts 0..k: cumulative sums give
    # TP and FP at every threshold; only the last of a run of ties, and values > 0, are ones.
    order_PF = jnp.argsort(-max_PF, axis=0)
    v_PF = jnp.take_along_axis(max_PF, order_PF, axis=0)
    tp_PF = jnp.cumsum(pos_P[order_PF], axis=0)
    fp_PF = jnp.cumsum(neg_P[order_PF], axis=0)
    last_of_ties_PF = jnp.concatenate([v_PF[:-1] > v_PF[1:], jnp.ones_like(v_PF[:1], bool)])
    f1_PF = 2 * tp_PF / jnp.maximum(tp_PF + fp_PF + pos_P.sum(), 1.0)
    return jnp.max(jnp.where(last_of_ties_PF & (v_PF > 0), f1_PF, 0.0), axis=0)


SCORES = {"f1": best_f1, "fire_diff": fire_diff, "max_diff": max_diff,
          "norm_max_diff": norm_max_diff}  # the first is the default


def rank_features(max_PF, pos_P, neg_P, st: SearchStatic):
    """(ids, score, pos stat, neg stat) of the top_n features by `st.score`; pos/neg are 0/1
    weights over the prompts (padding rows are in neither).

    Ties, common with a few prompts (f1 and fire_diff then take few values), go to the larger
    max_diff, then to the lower id.
    """
    score_F = SCORES[st.score](max_PF, pos_P, neg_P)
    ids_K = jnp.lexsort((-max_diff(max_PF, pos_P, neg_P), -score_F))[: st.top_n]
    return ids_K, score_F[ids_K], _mean_over(pos_P, max_PF)[ids_K], _mean_over(neg_P, max_PF)[ids_K]


@functools.partial(jax.jit, static_argnames="st")
def _contrast(lm_params, sae, tokens_PL, scored_P2, pos_P, neg_P, st: SearchStatic):
    max_PF = prompt_maxima(st, lm_params, sae, tokens_PL, scored_P2)
    return rank_features(max_PF, pos_P, neg_P, st)


# ------------------------------------------------------------------------------- host side


def _check_top_n(top_n: int) -> None:
    if isinstance(top_n, bool) or int(top_n) != top_n or top_n <= 0:
        raise ValueError(f"top_n must be a positive integer, got {top_n!r}")


def _scored_start(model: splice.SplicedModel, prompt: Prompt) -> int:
    """Position (after the EOT) of the first token of a prompt's scored text."""
    if isinstance(prompt, str):
        return 1
    context, text = prompt
    if not text.strip():
        raise ValueError(f"prompt ({context!r}, {text!r}) has a blank text to score")
    # The first token that ends inside the text (BPE may merge across the boundary).
    ends = [end for _, end in model.tok.encode(context + text).offsets]
    return 1 + next(i for i, end in enumerate(ends) if end > len(context))


def tokenize(model: splice.SplicedModel, prompts: Sequence[Prompt], rows: int = 1):
    """(tokens [P, L] int32, scored [P, 2] int32 = [start, end) positions scored).

    splice.tokenize_prompts padded to a length multiple of LENGTH_BUCKET (within the context)
    and to a multiple of `rows` prompts (extra rows score nothing)."""
    texts = [p if isinstance(p, str) else p[0] + p[1] for p in prompts]
    tokens_PL, lengths_P = splice.tokenize_prompts(model, texts)
    num, length = tokens_PL.shape
    length = min(-(-length // LENGTH_BUCKET) * LENGTH_BUCKET, model.model_cfg.context_len)
    num_padded = -(-num // rows) * rows
    out_PL = np.full((num_padded, length), model.eot, np.int32)
    out_PL[:num, : tokens_PL.shape[1]] = tokens_PL
    scored_P2 = np.ones((num_padded, 2), np.int32)
    scored_P2[:num, 0] = [_scored_start(model, p) for p in prompts]
    scored_P2[:num, 1] = lengths_P
    return out_PL, scored_P2


def prompt_features(
    model: splice.SplicedModel, prompts: Sequence[Prompt], top_n: int = 10
) -> list[PromptFeatures]:
    """Per prompt: the top_n features of each token and overall (by max over its tokens)."""
    _check_top_n(top_n)
    tokens_PL, scored_P2 = tokenize(model, prompts)
    st = SearchStatic(model.model_cfg, min(int(top_n), model.num_features))
    out = jax.device_get(_summarise(model.lm_params, model.sae, tokens_PL, scored_P2, st))
    tok_ids, tok_acts, top_ids, top_max, top_mean = out
    results = []
    for p, prompt in enumerate(prompts):
        valid = slice(*scored_P2[p])
        words = tuple(model.tok.decode([int(t)]) for t in tokens_PL[p, valid])
        results.append(PromptFeatures(prompt, words, tok_ids[p, valid], tok_acts[p, valid],
                                      top_ids[p], top_max[p], top_mean[p]))
    return results


def contrastive(
    model: splice.SplicedModel,
    with_prompts: Sequence[Prompt],
    without_prompts: Sequence[Prompt],
    top_n: int = 10,
    score: str = "f1",
    batch_size: int = 32,
) -> Contrast:
    """Features active on `with_prompts` and not on `without_prompts`, ranked by `score`."""
    _check_top_n(top_n)
    if score not in SCORES:
        raise ValueError(f"score must be one of {sorted(SCORES)}, got {score!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not with_prompts or not without_prompts:
        raise ValueError("contrastive search needs at least one 'with' and one 'without' prompt")
    num = len(with_prompts) + len(without_prompts)
    batch = min(int(batch_size), num)
    tokens_PL, scored_P2 = tokenize(model, [*with_prompts, *without_prompts], batch)
    pos_P = np.zeros(tokens_PL.shape[0], np.float32)
    pos_P[: len(with_prompts)] = 1.0
    neg_P = np.zeros_like(pos_P)
    neg_P[len(with_prompts) : num] = 1.0
    st = SearchStatic(model.model_cfg, min(int(top_n), model.num_features), batch, score)
    out = _contrast(model.lm_params, model.sae, tokens_PL, scored_P2, pos_P, neg_P, st)
    ids, scores, pos, neg = (np.asarray(x) for x in jax.device_get(out))
    return Contrast(score, ids, scores, pos, neg)


# -------------------------------------------------------------------- the monosem-search stage


def split_prompts(text: str) -> list[str]:
    """The non-blank prompts of a SEPARATOR-joined list (surrounding spaces kept: they tokenize)."""
    return [p for p in str(text).split(SEPARATOR) if p.strip()]


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Validated settings of `monosem-search` (configs/search/default.py documents each)."""

    sae_name: str = ""
    prompt: str = ""
    with_prompts: tuple[str, ...] = ()  # the config's SEPARATOR-joined list, split
    without_prompts: tuple[str, ...] = ()
    context: str = ""
    top_n: int = 10
    score: str = "f1"
    batch_size: int = 32
    name: str = ""

    def __post_init__(self):
        _mode(self)  # exactly one mode
        stage_config.check(type(self.top_n) is int, "top_n", self.top_n, "an integer > 0")
        stage_config.positive(self, ("top_n", "batch_size"))
        stage_config.one_of("score", self.score, SCORES)
        stage_config.path_component("name", self.name, allow_empty=True)  # W/search/<name>.json

    @property
    def mode(self) -> str:
        """'prompt' (one prompt's features) or 'contrastive'."""
        return _mode(self)


def search_config_from(config: ml_collections.ConfigDict) -> SearchConfig:
    """The frozen SearchConfig of a ConfigDict (one clear ValueError per bad value)."""
    return stage_config.from_config(
        SearchConfig, config,
        with_prompts=tuple(split_prompts(config.with_prompts)),
        without_prompts=tuple(split_prompts(config.without_prompts)),
    )


def _mode(cfg: SearchConfig) -> str:
    prompt = bool(cfg.prompt.strip())
    with_, without = bool(cfg.with_prompts), bool(cfg.without_prompts)
    if prompt and (with_ or without):
        raise ValueError("give either search.prompt or search.with_prompts/without_prompts, "
                         "not both")
    if prompt:
        return "prompt"
    if with_ and without:
        return "contrastive"
    if with_ or without:
        raise ValueError("contrastive search needs both search.with_prompts and "
                         f"search.without_prompts (prompts joined by {SEPARATOR!r})")
    raise ValueError("nothing to search: set search.prompt, or search.with_prompts and "
                     "search.without_prompts")


def _format_prompt(found: dict) -> list[str]:
    lines = [f"prompt: {found['prompt']!r}", "  pos  token            top features (id:activation)"]
    for t, row in enumerate(found["tokens"], 1):
        feats = "  ".join(f"{p['feature']}:{p['act']:.3g}" for p in row["features"]) or "-"
        lines.append(f"  {t:3d}  {json.dumps(row['token'], ensure_ascii=False):15.15s}  {feats}")
    lines.append("  overall: feature      max     mean")
    lines += [f"          {r['feature']:7d}  {r['max']:7.3g}  {r['mean']:7.3g}"
              for r in found["top"]]
    return lines


def _format_contrast(ranking: list[dict], score: str, num_with: int, num_without: int):
    lines = [f"contrastive ({score}; {num_with} with, {num_without} without)",
             "  rank  feature    score     with  without"]
    lines += [f"  {i:4d}  {r['feature']:7d}  {r['score']:7.3g}  {r['with']:7.3g}  "
              f"{r['without']:7.3g}" for i, r in enumerate(ranking, 1)]
    return lines


def search(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The monosem-search stage: prints a table, writes W/search/<name>.json, returns it."""
    cfg = search_config_from(config)  # bad values fail here, before the minutes-long load
    model = splice.load(workdir, cfg.sae_name)
    context = cfg.context
    in_context = lambda texts: [(context, t) for t in texts] if context else list(texts)
    if cfg.mode == "prompt":
        prompts = [cfg.prompt]
        (found,) = prompt_features(model, in_context(prompts), cfg.top_n)
        result = {**found.to_json(), "prompt": prompts[0]}  # the context has its own field
        lines = _format_prompt(result)
    else:
        with_, without = list(cfg.with_prompts), list(cfg.without_prompts)
        prompts = [*with_, SEPARATOR, *without]
        contrast = contrastive(model, in_context(with_), in_context(without), cfg.top_n,
                               cfg.score, cfg.batch_size)
        result = {"with_prompts": with_, "without_prompts": without, "score": cfg.score,
                  "ranking": contrast.to_json()}
        lines = _format_contrast(result["ranking"], cfg.score, len(with_), len(without))
    digest = hashlib.sha256("\n".join([context, *prompts]).encode()).hexdigest()[:8]
    name = cfg.name or f"{model.sae.name}_{cfg.mode}_{digest}"
    path = os.path.join(workdir, "search", f"{name}.json")
    summary = {"mode": cfg.mode, "sae_name": model.sae.name, "hook": model.hook,
               "context": context, "top_n": cfg.top_n, "path": path, **result}
    metrics_io.write_json_atomic(path, summary)
    print("\n".join(lines), flush=True)
    print(json.dumps(summary, sort_keys=True, ensure_ascii=False), flush=True)
    return summary
