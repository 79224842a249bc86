"""Steering dose-response: clamp a topic feature and count that topic's words in generations.

  python experiments/steering_dose_response.py --workdir W [--sae-name anthropic_2024]
      [--concept topic_ocean] [--multiples -4,-2,1,2,4,8,16] [--samples 8] [--num-new 40]

The feature is the one with the best F1 for the concept in W/eval/<sae>.json (run the eval
stage first). Neutral story openings (no topic word) are continued `samples` times each, 64
continuations in all, unsteered and with the feature clamped at each multiple of its maximum
activation on held-out tokens, every dose in one compiled program with the same random keys
(steer.generate). The topic word rate is topic words / all words of the continuations, with the
topic's vocabulary from the corpus generator (corpus.generator.topic_vocabulary, English and
French). Prints a table, the PNG path and, last, a JSON object with `steered_over_base` (the
best positive dose's rate over the unsteered rate; goal >= 5) and `negative_over_base`.
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

from monosem_jax.corpus import generator  # noqa: E402
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
    p.add_argument("--workdir", required=True, help="a finished default pipeline run")
    p.add_argument("--sae-name", default="anthropic_2024")
    p.add_argument("--concept", default="topic_ocean", help="a topic_* concept")
    p.add_argument("--multiples", default="-4,-2,1,2,4,8,16",
                   help="clamp values as multiples of the feature's max activation")
    p.add_argument("--samples", type=int, default=8, help="continuations per prompt")
    p.add_argument("--num-new", type=int, default=40, help="tokens per continuation")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.concept.startswith("topic_"):
        p.error(f"--concept must be a topic concept (topic_ocean, ...), got {args.concept!r}")
    return args


def topic_rate(texts: list[str], vocab: frozenset[str]) -> tuple[float, int, int]:
    """(rate, topic words, words) over the texts."""
    words = [w for t in texts for w in WORD.findall(t.lower())]
    hits = sum(w in vocab for w in words)
    return hits / max(len(words), 1), hits, len(words)


def plot(path: str, multiples, rates, base: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(multiples, rates, "o-", label="steered")
    ax.axhline(base, color="gray", ls="--", label="unsteered")
    ax.set_xlabel("clamp (x max activation)")
    ax.set_ylabel("topic word rate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    eval_path = os.path.join(args.workdir, "eval", f"{args.sae_name}.json")
    if not os.path.exists(eval_path):
        sys.exit(f"error: no {eval_path}; run monosem-eval (or the pipeline) first")
    with open(eval_path) as f:
        best = (json.load(f).get("concept_f1") or {}).get(args.concept)
    if best is None:
        sys.exit(f"error: {eval_path} has no concept_f1 for {args.concept}")
    topic = args.concept[len("topic_"):]
    vocab = generator.topic_vocabulary()[topic]
    for prompt in NEUTRAL_PROMPTS:  # the prompts themselves must not carry the topic
        assert not set(WORD.findall(prompt.lower())) & vocab, prompt

    model = splice.load(args.workdir, args.sae_name)
    ids_K = np.array([best["feature"]], np.int32)
    max_act = float(steer.max_activations(model, args.workdir, ids_K)[0])
    multiples = [float(m) for m in args.multiples.split(",")]
    print(f"{args.concept}: feature {best['feature']} (F1 {best['f1']:.3f}, max activation "
          f"{max_act:.3f}); {len(NEUTRAL_PROMPTS)} prompts x {args.samples} samples, "
          f"doses {multiples}", flush=True)
    values_VK = np.array(multiples, np.float32)[:, None] * max_act
    t_gen = time.time()
    result = steer.steer(model, list(NEUTRAL_PROMPTS), ids_K, values_VK,
                         num_samples=args.samples, num_new=args.num_new,
                         temperature=args.temperature, seed=args.seed)
    gen_s = time.time() - t_gen
    flat = lambda rows: [t for row in rows for t in row]  # noqa: E731
    base, base_hits, base_words = topic_rate(flat(result["baseline"]), vocab)
    rates = []
    print(f"{'clamp':>8} {'rate':>8} {'hits':>6} {'words':>6}  example", flush=True)
    print(f"{'none':>8} {base:8.4f} {base_hits:6d} {base_words:6d}  "
          f"{result['baseline'][0][0][:70]!r}")
    for m, rows in zip(multiples, result["steered"], strict=True):
        rate, hits, words = topic_rate(flat(rows), vocab)
        rates.append(rate)
        print(f"{m:>7g}x {rate:8.4f} {hits:6d} {words:6d}  {rows[0][0][:70]!r}", flush=True)
    # A zero base rate would make any ratio infinite: count one topic word as the floor.
    floor = max(base, 1 / max(base_words, 1))
    positive = [(r, m) for r, m in zip(rates, multiples, strict=True) if m > 0]
    best_rate, best_multiple = max(positive) if positive else (float("nan"), None)
    negative = [r for r, m in zip(rates, multiples, strict=True) if m < 0]
    out_dir = os.path.join(args.workdir, "steer")
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, f"dose_response_{args.concept}.png")
    plot(png, multiples, rates, base,
         f"{args.sae_name} feature {best['feature']} ({args.concept}, F1 {best['f1']:.2f})")
    print(png, flush=True)
    summary = {
        "steered_over_base": best_rate / floor,
        "best_multiple": best_multiple,
        "negative_over_base": (min(negative) / floor) if negative else None,
        "base_rate": base,
        "rates": dict(zip(map(str, multiples), rates, strict=True)),
        "concept": args.concept,
        "feature": best["feature"],
        "feature_f1": best["f1"],
        "max_activation": max_act,
        "continuations": len(NEUTRAL_PROMPTS) * args.samples,
        "num_new": args.num_new,
        "generation_s": round(gen_s, 1),
        "wall_s": round(time.time() - t0, 1),
        "png": png,
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
