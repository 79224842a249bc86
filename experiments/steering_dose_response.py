"""Steering dose-response for every topic: clamp a topic's feature, count the topic's words in
generations, and check the text stays fluent.

  python experiments/steering_dose_response.py --workdir W [--sae-name NAME]
      [--concepts topic_ocean,topic_space] [--multiples -4,-2,1,2,4,8,16] [--samples 8]

For each topic concept (default: every topic_* concept of the corpus) the feature is, with
--pick logit (the default), the live feature whose decoder direction, read through the LM's final
LayerNorm gain and unembedding (its direct logit effect, as the browser shows it), most raises the
topic's words: the largest mean z-score (over the vocabulary) of the topic words' tokens. A
feature that *detects* a topic on the input side need not *write* it: on the default run the
best-F1 topic features are generic noun-slot features (F1 ~0.17, one shared by three topics).
--pick f1 takes the best-F1 feature of W/eval/<sae>.json instead (run the eval stage first).
Neutral story openings (no topic word) are continued `samples` times each, unsteered and with
the feature clamped at each multiple of its maximum activation on held-out tokens, every dose in
one compiled program with the same random keys (steer.generate). The topic word rate is topic
words / all words of the continuations; a topic's words are the words its labels mark in the
training split (so a labelled real corpus works too). The fluency guard is the continuations'
perplexity under the unsteered LM, over the unsteered continuations' perplexity. A topic is
steered when some positive dose raises the rate >= 5x with a perplexity ratio <= 2. Prints a
table per topic and, last, a JSON object with `topics_steered` and per-topic rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from monosem_jax import metrics_io  # noqa: E402
from monosem_jax.analysis import interpret  # noqa: E402
from monosem_jax.corpus import dataset  # noqa: E402
from monosem_jax.intervene import splice, steer  # noqa: E402

# Openings of the corpus's own story shapes that name no topic (checked below).
NEUTRAL_PROMPTS = (
    "Once upon a time, there was a little",
    "One day, a little girl named Lily",
    "Once upon a time, a boy named Tom",
    "One morning, Sam woke up and",
    "There was a happy little dog who",
    "Mia and her mom went to the",
    "Once upon a time, in a small town,",
    "Ben said, \"Let's go and",
)
WORD = re.compile(r"[^\W\d_]+")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a finished pipeline run with labels")
    p.add_argument("--sae-name", default="", help="default: the pipeline's SAE")
    p.add_argument("--concepts", default="", help="comma-separated concepts (default: topics)")
    p.add_argument("--multiples", default="-4,-2,1,2,4,8,16",
                   help="clamp values as multiples of the feature's max activation")
    p.add_argument("--samples", type=int, default=8, help="continuations per prompt")
    p.add_argument("--num-new", type=int, default=40, help="tokens per continuation")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pick", choices=["logit", "f1"], default="logit",
                   help="how each topic's feature is chosen (see above)")
    p.add_argument("--goal-ratio", type=float, default=5.0)
    p.add_argument("--max-ppl-ratio", type=float, default=2.0)
    return p.parse_args(argv)


def topic_rate(texts: list[str], vocab: frozenset[str]) -> tuple[float, int, int]:
    """(rate, topic words, words) over the texts."""
    words = [w for t in texts for w in WORD.findall(t.lower())]
    hits = sum(w in vocab for w in words)
    return hits / max(len(words), 1), hits, len(words)


def labelled_vocabulary(workdir: str, concepts: list[str], max_tokens: int = 600_000,
                        min_share: float = 0.5) -> dict[str, frozenset[str]]:
    """Per concept, the lowercase words its labels mark on at least `min_share` of their
    occurrences in the first `max_tokens` training tokens (words = runs of letters, rebuilt
    from the decoded tokens)."""
    data_dir = os.path.join(workdir, "data")
    split = dataset.load_split(data_dir, "train")
    tok = dataset.load_dataset_tokenizer(data_dir)
    ids = np.asarray(split.tokens_N[:max_tokens])
    labels = np.asarray(split.labels_N[:max_tokens])
    pieces = [tok.decode([i]) for i in range(tok.get_vocab_size())]
    counts: dict[str, list[int]] = {}
    word, word_bits = "", np.uint32(0)

    def flush():
        if word:
            row = counts.setdefault(word, [0] + [0] * len(concepts))
            row[0] += 1
            for c in range(len(concepts)):
                row[c + 1] += int(word_bits >> np.uint32(c) & 1)

    for i, bits in zip(ids.tolist(), labels.tolist(), strict=False):
        piece = pieces[i]
        letters = WORD.match(piece.lstrip())
        if piece[:1].isalpha() and word and letters and letters.group() == piece:
            word += piece.lower()  # a word continued without a space
            word_bits &= np.uint32(bits)
            continue
        flush()
        word, word_bits = (letters.group().lower(), np.uint32(bits)) if letters else ("", 0)
        if letters and letters.end() != len(piece.lstrip()):
            flush()
            word = ""
    flush()
    return {c: frozenset(w for w, row in counts.items() if row[k + 1] >= min_share * row[0])
            for k, c in enumerate(concepts)}


def plot(path: str, multiples, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    for row in rows:
        rates = [row["rates"][str(m)] / max(row["base_rate"], 1e-9) for m in multiples]
        ax.plot(multiples, rates, "o-", label=row["concept"])
        bx.plot(multiples, [row["ppl_ratio"][str(m)] for m in multiples], "o-")
    ax.axhline(5, color="gray", ls="--")
    bx.axhline(2, color="gray", ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("clamp (x max activation)")
    ax.set_ylabel("topic word rate / unsteered")
    bx.set_xlabel("clamp (x max activation)")
    bx.set_ylabel("perplexity / unsteered")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def topic_writers(model, workdir: str, sae_name: str, vocab: dict[str, frozenset[str]],
                  concepts: list[str]) -> dict[str, dict]:
    """Per concept, the live feature whose direct logit effect most favours the concept's words:
    argmax over features of the mean z-score of the words' tokens (each word's tokens after a
    space; a word of several tokens counts by its first)."""
    w_u_DV = interpret.unembedding(model.model_cfg, model.lm_params)
    scale = model.lm_params["ln_final"].get("scale")
    u_FD = interpret.logit_directions(model.sae.params["w_dec_FD"],
                                      None if scale is None else np.asarray(scale))
    e_FV = u_FD @ w_u_DV[:, : model.tok.get_vocab_size()]
    z_FV = (e_FV - e_FV.mean(axis=1, keepdims=True)) / (e_FV.std(axis=1, keepdims=True) + 1e-9)
    density_F = np.load(os.path.join(workdir, "eval", f"{sae_name}_features.npz"))["density_F"]
    z_FV[density_F <= 0] = -np.inf  # a feature that never fires has no activation to clamp
    picks = {}
    for c in concepts:
        ids = sorted({model.tok.encode(" " + w).ids[0] for w in vocab[c]})
        if not ids:
            continue
        score_F = z_FV[:, ids].mean(axis=1)
        f = int(np.argmax(score_F))
        picks[c] = {"feature": f, "logit_z": float(score_F[f]), "tokens": len(ids)}
    return picks


def steer_topic(model, args, concept: str, best: dict, vocab: frozenset[str], multiples):
    prompts = [p for p in NEUTRAL_PROMPTS if not set(WORD.findall(p.lower())) & vocab]
    ids_K = np.array([best["feature"]], np.int32)
    max_act = float(steer.max_activations(model, args.workdir, ids_K)[0])
    values_YK = np.array(multiples, np.float32)[:, None] * max_act
    result = steer.steer(model, prompts, ids_K, values_YK, num_samples=args.samples,
                         num_new=args.num_new, temperature=args.temperature, seed=args.seed)
    nll_Y = steer.continuation_nll(model, result["tokens"], result["prompt_lengths"],
                                   args.num_new)
    ppl_Y = np.exp(nll_Y)
    flat = lambda rows: [t for row in rows for t in row]  # noqa: E731
    base, _, base_words = topic_rate(flat(result["baseline"]), vocab)
    floor = max(base, 1 / max(base_words, 1))  # one topic word: no infinite ratio
    rates, examples = {}, {}
    why = (f"F1 {best['f1']:.3f}" if "f1" in best
           else f"logit z {best['logit_z']:.2f} over {best['tokens']} topic tokens")
    print(f"{concept}: feature {best['feature']} ({why}, max act {max_act:.3f})")
    print(f"{'clamp':>8} {'rate':>8} {'x base':>7} {'ppl':>7}  example")
    print(f"{'none':>8} {base:8.4f} {1:7.2f} {ppl_Y[0]:7.2f}  {result['baseline'][0][0][:60]!r}")
    for v, (m, rows) in enumerate(zip(multiples, result["steered"], strict=True)):
        rate, _, _ = topic_rate(flat(rows), vocab)
        rates[str(m)] = rate
        examples[str(m)] = rows[0][0]
        print(f"{m:>7g}x {rate:8.4f} {rate / floor:7.2f} {ppl_Y[v + 1]:7.2f}  {rows[0][0][:60]!r}")
    ppl_ratio = {str(m): float(ppl_Y[v + 1] / ppl_Y[0]) for v, m in enumerate(multiples)}
    fluent = [(rates[str(m)] / floor, m) for m in multiples
              if m > 0 and ppl_ratio[str(m)] <= args.max_ppl_ratio]
    best_ratio, best_multiple = max(fluent) if fluent else (0.0, None)
    negative = [rates[str(m)] / floor for m in multiples if m < 0]
    return {
        "concept": concept, "feature": best["feature"], "feature_f1": best.get("f1"),
        "feature_logit_z": best.get("logit_z"),
        "max_activation": max_act, "base_rate": base, "base_ppl": float(ppl_Y[0]),
        "rates": rates, "ppl_ratio": ppl_ratio,
        "fluent_steered_over_base": best_ratio, "best_fluent_multiple": best_multiple,
        "steered_over_base_any_ppl": max(rates[str(m)] / floor for m in multiples if m > 0),
        "negative_over_base": min(negative) if negative else None,
        "steered": best_ratio >= args.goal_ratio, "vocabulary_words": len(vocab),
        "prompts": len(prompts), "examples": examples,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    sae_name = metrics_io.resolve_sae_name(args.workdir, args.sae_name)
    eval_path = os.path.join(args.workdir, "eval", f"{sae_name}.json")
    if not os.path.exists(eval_path):
        sys.exit(f"error: no {eval_path}; run monosem-eval (or the pipeline) first")
    with open(eval_path) as f:
        concept_f1 = json.load(f).get("concept_f1") or {}
    concepts = dataset.load_meta(os.path.join(args.workdir, "data")).get("concepts") or []
    # Default: every topic; a labelled corpus without topic_* concepts steers all of its own.
    topics = [c for c in concepts if c.startswith("topic_")] or list(concepts)
    wanted = [c for c in args.concepts.split(",") if c] if args.concepts else topics
    missing = [c for c in wanted if c not in concept_f1]
    if not wanted or missing:
        sys.exit(f"error: no topic concepts to steer (missing from {eval_path}: {missing})")
    vocab = labelled_vocabulary(args.workdir, concepts)
    multiples = [float(m) for m in args.multiples.split(",")]
    model = splice.load(args.workdir, sae_name)
    picks = (topic_writers(model, args.workdir, sae_name, vocab, wanted) if args.pick == "logit"
             else concept_f1)
    rows = [steer_topic(model, args, c, picks[c], vocab[c], multiples) for c in wanted
            if c in picks]
    out_dir = os.path.join(args.workdir, "steer")
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, f"dose_response_{sae_name}_{args.pick}.png")
    plot(png, multiples, rows)
    summary = {
        "sae_name": sae_name, "pick": args.pick,
        "topics_steered": sum(r["steered"] for r in rows),
        "topics": len(rows),
        "rows": rows,
        "samples": args.samples, "num_new": args.num_new,
        "wall_s": round(time.time() - t0, 1), "png": png,
    }
    with open(os.path.join(out_dir, f"dose_response_{sae_name}_{args.pick}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
