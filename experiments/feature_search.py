"""Does contrastive feature search find the labelled concepts' features?

Question: for each concept, build prompts with and without it from stories the LM and SAE never
trained on (fresh generated stories, or a real corpus's eval split: see "Prompt stories"; no
look at which feature is the answer), run `search.contrastive`, and ask whether the concept's
best-F1 feature (W/eval/<sae>.json `concept_f1`, measured on the eval split's token labels) is
among the top 3 returned. Goal (generated corpus): top3_fraction >= 0.8, and top3_unique_count
>= 10 of 12, where a feature that is the best-F1 feature of several concepts counts for none of
them. Since several features can detect a concept about equally well, each of the top 3 is also
graded by its own token F1 on the eval split ("feature > 0", the threshold of every best_f1 on
the default run), after the search: top3_f1_ratio is the best of the three over best_f1,
averaged over concepts.

Prompts (--unit word, the default) are single words, each searched in the context of the story
before it (search.Prompt; up to --context-tokens, default 96): the default LM's features depend
on context and position (a name feature silent on " Tim" in a bare sentence fires on it 50
tokens into a story), and a word is what the eval's token labels mark, where a sentence also
holds the tokens after the concept that features downstream of it fire on. A word is "with"
the concept when one of the concept's labelled spans overlaps the word ("french" spans whole
French stories); each "with" word is paired with the unused "without" word closest in length.
--unit sentence searches whole sentences instead.

  python experiments/feature_search.py --workdir W [--sae-name NAME]   (~40 s, CPU)
  python experiments/feature_search.py --workdir W --score all     # compare the scores

Prompt stories. On the generated corpus (W/corpus/summary.json "source" == "generated") the
stories are fresh ones from the generator (--seed, --num-stories), never seen in training. On a
real corpus with a labels file (corpus.labels) the generator knows neither the text nor the
concepts, so the stories are the corpus's own EVAL split, the first --num-stories of it in corpus
order, with their spans from the labels file: the texts and labels are re-read from the paths
that summary.json records ("source", "labels"; format from W/pipeline/corpus.json when the
pipeline ran, else "auto"; capped at its "documents"), and the split is recomputed with
dataset.split_documents from the eval_fraction and seed that W/data/meta.json records (the ones
the data were split with, there whether the corpus stage ran alone or in the pipeline). The LM
and SAE never trained on these stories, but the eval measured best_f1 on them: a weaker test
than fresh stories, though the search still never sees which feature is the answer. A changed
labels file, or stories that tokenize differently from W/data's eval split, are refused.

A concept is skipped (rank null, its reason in "skipped") when it has no best-F1 feature (no
labelled token in the evaluated eval tokens), no "with" word (e.g. a punctuation concept under
--unit word) or no "without" one; fractions and counts are over the searched concepts.

Prints a per-concept table (rank of the best-F1 feature, the top 3 returned and their token F1);
the last stdout line is one JSON object with top3_fraction, per-concept ranks and the settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as `python experiments/feature_search.py` from anywhere
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from monosem_jax import metrics_io  # noqa: E402
from monosem_jax.analysis import features  # noqa: E402
from monosem_jax.corpus import dataset, generator, labels, loaders  # noqa: E402
from monosem_jax.intervene import search, splice  # noqa: E402

TOP = 3
GOAL = 0.8
# A sentence ends at . ! ? (and a closing quote right after); newlines end one too.
_SENTENCE_RE = re.compile(r'[^\s][^\n]*?(?:[.!?]+"?(?=\s|$)|(?=\n)|$)')
# A word with the space before it; punctuation and quotes stay in the context, as they carry
# no concept label (dialogue is the text strictly inside the quotes).
_WORD_RE = re.compile(r"\s?\w+(?:'\w+)?")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a pipeline work dir with W/eval/<sae>.json")
    p.add_argument("--sae-name", default="", help="the SAE run W/sae/<name> (default: the "
                   "pipeline's SAE)")
    p.add_argument("--seed", type=int, default=12345,
                   help="story seed (not the corpus seed) and prompt-sampling seed")
    p.add_argument("--num-stories", type=int, default=600,
                   help="stories to draw prompts from: fresh generated ones, or the first of a "
                        "real corpus's eval split")
    p.add_argument("--prompts", type=int, default=192, help="prompts per side per concept")
    p.add_argument("--score", default="f1", choices=[*search.SCORES, "all"],
                   help="contrastive score; 'all' runs each (the JSON's headline is f1)")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per forward pass")
    p.add_argument("--unit", default="word", choices=["word", "sentence"],
                   help="searched snippets: single words or whole sentences")
    p.add_argument("--f1-tokens", type=int, default=65536,
                   help="eval tokens on which the picks' token F1 is measured (0: skip)")
    p.add_argument("--context-tokens", type=int, default=96,
                   help="story context before each sentence, at most this many tokens in all "
                        "(0: bare sentences)")
    return p.parse_args(argv)


# A story to draw prompts from: its text and its concept spans (labels.Span: start, end, concept).
Story = tuple[str, Sequence[labels.Span]]


def snippets(story: Story, tok, budget: int, unit: str) -> list[tuple[tuple, set]]:
    """((context, snippet), concepts whose spans overlap the snippet) for each word or sentence
    of a story.

    A snippet keeps the space or newline before it: inside a story a word is " Tom", another
    token than "Tom". Its context is the story before it, from the earliest sentence start that
    keeps context + snippet within `budget` tokens (0: no context).
    """
    text, spans = story
    starts = [m.start() for m in _SENTENCE_RE.finditer(text)]
    pattern = _SENTENCE_RE if unit == "sentence" else _WORD_RE
    token_ends = np.array([end for _, end in tok.encode(text).offsets])
    out = []
    for m in pattern.finditer(text):
        start, end = m.span()
        first = max(start - 1, 0) if unit == "sentence" else start  # words hold their space
        context_start = first
        for prev in starts if budget else []:
            # tokens ending in (prev, end]: what starting the context there costs
            cost = np.searchsorted(token_ends, end, "right") - np.searchsorted(
                token_ends, prev, "right")
            if prev < first and cost <= budget:
                context_start = prev
                break
        concepts = {s.concept for s in spans if s.start < end and s.end > start}
        out.append(((text[context_start:first], text[first:end]), concepts))
    return out


def prompt_sets(pool, concept: str, num: int, rng: random.Random) -> tuple[list, list]:
    """`num` sentences with the concept, and as many without it, matched one to one in length
    (of the sentence: the searched text); fewer when either side has fewer."""
    with_ = [s for s, cs in pool if concept in cs]
    without = [s for s, cs in pool if concept not in cs]
    chosen = rng.sample(with_, min(num, len(with_), len(without)))
    free = sorted(without, key=lambda p: len(p[1]))
    lengths = np.array([len(p[1]) for p in free])
    matched = []
    for p in chosen:  # nearest unused length (ties: the first); removal keeps it unused
        i = int(np.argmin(np.abs(lengths - len(p[1]))))
        matched.append(free.pop(i))
        lengths = np.delete(lengths, i)
    return chosen, matched


def corpus_summary(workdir: str) -> dict:
    """W/corpus/summary.json ({"source": "generated"} for a work dir from before the field)."""
    path = os.path.join(workdir, "corpus", "summary.json")
    return metrics_io.read_json(path) if os.path.exists(path) else {"source": "generated"}


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def eval_split_stories(workdir: str, summary: dict, max_stories: int, tok) -> list[Story]:
    """The first `max_stories` stories of a real corpus's eval split, with their labelled spans.

    Re-reads the corpus and labels from the paths in `summary` (W/corpus/summary.json) and
    recomputes the split with the eval_fraction and seed recorded in W/data/meta.json; refuses a
    labels file changed since the corpus stage, and stories that do not tokenize to W/data's
    eval split (a moved or edited corpus, another format).
    """
    if not summary.get("labels"):
        raise SystemExit(f"error: the corpus {summary['source']} has no concept labels "
                         "(corpus.labels): no concepts to search")
    if summary.get("labels_sha256") and _sha256(summary["labels"]) != summary["labels_sha256"]:
        raise SystemExit(f"error: {summary['labels']} changed since the corpus stage; W/data's "
                         "token labels no longer match it")
    recorded = os.path.join(workdir, "pipeline", "corpus.json")
    fmt = (metrics_io.read_json(recorded)["corpus"].get("format", "auto")
           if os.path.exists(recorded) else "auto")
    texts = loaders.load_texts(summary["source"], fmt)
    spans, _ = labels.load_labels(summary["labels"], texts, corpus=summary["source"])
    num_docs = summary.get("documents", len(texts))  # corpus.max_documents keeps the first ones
    data_dir = os.path.join(workdir, "data")
    meta = dataset.load_meta(data_dir)
    is_eval_D = dataset.split_documents(num_docs, meta["eval_fraction"], meta["seed"])
    eval_ids = np.flatnonzero(is_eval_D)[:max_stories]
    split = dataset.load_split(data_dir, "eval")
    ends_D = [*(split.doc_starts_D[1:] - 1), len(split.tokens_N)]
    for j, i in enumerate(eval_ids):  # eval story j is document j of the eval split
        stored = np.asarray(split.tokens_N[split.doc_starts_D[j] : ends_D[j]])
        if tok.encode(texts[i], add_special_tokens=False).ids != stored.tolist():
            raise SystemExit(f"error: story {i} of {summary['source']} does not tokenize to eval "
                             f"document {j} of {data_dir}: the corpus changed since the corpus "
                             "stage")
    return [(texts[i], spans[i]) for i in eval_ids]


def skip_reason(concept: str, best: dict, pool, unit: str) -> str | None:
    """Why a concept cannot be searched, or None when it can."""
    if concept not in best:
        return ("no best-F1 feature in the eval: no token of the evaluated eval split is "
                "labelled with it")
    if not any(concept in cs for _, cs in pool):
        return f"no {unit} of the prompt stories overlaps one of its spans: no 'with' prompt"
    if all(concept in cs for _, cs in pool):
        return f"every {unit} of the prompt stories overlaps one of its spans: no 'without' prompt"
    return None


def run_score(model, sets, best, score: str, batch_size: int) -> dict:
    """Per concept: the 1-based rank of its best-F1 feature under `score` and the top 3."""
    out = {}
    for concept, (with_, without) in sets.items():
        found = search.contrastive(model, with_, without, model.num_features, score, batch_size)
        ids = found.feature_N.tolist()
        out[concept] = {"rank": ids.index(best[concept]["feature"]) + 1, "top3": ids[:TOP]}
    return out


def token_f1(workdir: str, model, ids_K: list[int], max_tokens: int) -> np.ndarray:
    """[K, C] F1 of "feature > 0" against each concept's token labels on the eval split (the
    eval's own measure at its threshold 0; C: W/data/meta.json's concepts, in bit order),
    position 0 of each window skipped as the eval does. Only to grade the search's picks
    afterwards: the prompts never see these labels."""
    length = model.model_cfg.context_len
    windows_WL = features.windows(workdir, "eval", length, max_tokens)
    labels_N = dataset.load_split(os.path.join(workdir, "data"), "eval").labels_N
    labels_WL = np.asarray(labels_N[: windows_WL.size]).reshape(windows_WL.shape)
    bits_C = np.uint32(1) << np.arange(len(dataset.load_meta(
        os.path.join(workdir, "data"))["concepts"]), dtype=np.uint32)
    tp_KC, pred_K, true_C = 0, 0, 0
    for first, _, _, a_BLF in features.iterate_features(
            model.model_cfg, model.lm_params, model.sae, windows_WL):
        fires_NK = a_BLF[:, 1:, ids_K].reshape(-1, len(ids_K)) > 0
        is_NC = (labels_WL[first : first + len(a_BLF), 1:].reshape(-1, 1) & bits_C) > 0
        tp_KC = tp_KC + fires_NK.T.astype(np.int64) @ is_NC
        pred_K, true_C = pred_K + fires_NK.sum(0), true_C + is_NC.sum(0)
    return 2 * tp_KC / np.maximum(pred_K[:, None] + true_C[None, :], 1)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    corpus = corpus_summary(args.workdir)
    generated = corpus.get("source") == "generated"
    if generated and args.seed == corpus.get("seed"):
        raise SystemExit(f"error: --seed {args.seed} is the corpus seed; pick another")
    args.sae_name = metrics_io.resolve_sae_name(args.workdir, args.sae_name)
    eval_path = os.path.join(args.workdir, "eval", f"{args.sae_name}.json")
    if not os.path.exists(eval_path):
        raise SystemExit(f"error: no {eval_path}; run monosem-eval --config.sae_name=...")
    best = metrics_io.read_json(eval_path)["concept_f1"]
    all_concepts = dataset.load_meta(os.path.join(args.workdir, "data"))["concepts"]
    if best is None or not all_concepts:
        raise SystemExit(f"error: {args.workdir}'s corpus is unlabelled: no concepts to search")
    model = splice.load(args.workdir, args.sae_name)

    if generated:  # fresh stories: the better test, where the generator knows the concepts
        stories = [(s.text, s.spans)
                   for s in generator.generate_stories(args.num_stories, args.seed)]
    else:
        stories = eval_split_stories(args.workdir, corpus, args.num_stories, model.tok)
    budget = min(args.context_tokens, model.model_cfg.context_len - 8)
    pool = [item for story in stories
            for item in snippets(story, model.tok, budget, args.unit)]
    rng = random.Random(args.seed)
    skipped = {c: r for c in all_concepts
               if (r := skip_reason(c, best, pool, args.unit)) is not None}
    concepts = [c for c in all_concepts if c not in skipped]  # the searched ones
    sets = {c: prompt_sets(pool, c, args.prompts, rng) for c in concepts}

    scores = list(search.SCORES) if args.score == "all" else [args.score]
    results = {s: run_score(model, sets, best, s, args.batch_size) for s in scores}
    fractions = {s: float(np.mean([r["rank"] <= TOP for r in res.values()])) if res else None
                 for s, res in results.items()}

    if args.f1_tokens and concepts:  # grade each pick by its own token F1 (as best_f1)
        ids = sorted({f for res in results.values() for r in res.values() for f in r["top3"]})
        f1_KC = token_f1(args.workdir, model, ids, args.f1_tokens)
        for res in results.values():
            for c, r in res.items():
                r["top3_f1"] = [round(float(f1_KC[ids.index(f), all_concepts.index(c)]), 3)
                                for f in r["top3"]]
    for score, res in results.items():
        fraction = "-" if fractions[score] is None else f"{fractions[score]:.2f}"
        print(f"\n{score}: top3_fraction {fraction}\n"
              f"{'concept':14s} {'best F1':>7s} {'feature':>7s} {'rank':>5s}  top 3 (token F1)")
        for c in concepts:
            picks = "  ".join(f"{f} ({g})" for f, g in zip(
                res[c]["top3"], res[c].get("top3_f1", ["-"] * TOP), strict=True))
            print(f"{c:14s} {best[c]['f1']:7.3f} {best[c]['feature']:7d} {res[c]['rank']:5d}  "
                  f"{picks}")
        for c, reason in skipped.items():
            print(f"{c:14s} skipped: {reason}")
    main_score = scores[0]
    # A generic feature that is the best-F1 feature of several concepts (e.g. one "story noun"
    # feature best for every topic) is not a concept's feature: its hits do not count. Owners
    # are counted over every concept the eval found (skipped ones too): a property of the eval.
    owners: dict[int, int] = {}
    for c in (c for c in all_concepts if c in best):
        owners[best[c]["feature"]] = owners.get(best[c]["feature"], 0) + 1
    shared = sorted(f for f, n in owners.items() if n > 1)
    unique_hits = [results[main_score][c]["rank"] <= TOP and owners[best[c]["feature"]] == 1
                   for c in concepts]
    summary = {
        "top3_fraction_unique": float(np.mean(unique_hits)) if concepts else None,
        "top3_unique_count": int(sum(unique_hits)),
        "shared_best_features": shared,
        "top3_fraction": fractions[main_score],
        "goal": GOAL,
        "score": main_score,
        # null for a skipped concept
        "ranks": {c: results[main_score][c]["rank"] if c in concepts else None
                  for c in all_concepts},
        "skipped": skipped,  # concept: why it was not searched
        "best_f1": {c: round(best[c]["f1"], 3) for c in all_concepts if c in best},
        "top3_fraction_by_score": fractions,
        "ranks_by_score": {s: {c: res[c]["rank"] if c in res else None for c in all_concepts}
                           for s, res in results.items()},
        # The best token F1 among a score's top 3 over the concept's best_f1, averaged over
        # concepts: how close the search's picks come to the best single feature.
        "top3_f1_ratio_by_score": {
            s: round(float(np.mean([max(r["top3_f1"]) / max(best[c]["f1"], 1e-9)
                                    for c, r in res.items()])), 3)
            for s, res in results.items()} if args.f1_tokens and concepts else None,
        "top3_f1": {c: results[main_score][c].get("top3_f1") for c in concepts},
        "settings": {"workdir": args.workdir, "sae_name": args.sae_name, "seed": args.seed,
                     "prompt_stories": "generated" if generated else "eval_split",
                     "num_stories": len(stories), "prompts": args.prompts,
                     "context_tokens": budget, "unit": args.unit,
                     "num_features": model.num_features, "hook": model.hook},
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


if __name__ == "__main__":
    main()
