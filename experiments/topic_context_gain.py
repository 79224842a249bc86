"""Does the LM use the story's topic? Prints the topic context gain (nats) and the loss by
window position of a trained LM (monosem_jax/gpt/context_probe.py has the definitions).

  python experiments/topic_context_gain.py --workdir runs/default [--pairs 400]

A gain near 0 means the model predicts a forest word no better after a forest story than after a
kitchen story; the pipeline's LM summary (W/lm/summary.json) carries the same figures.
"""

import argparse
import json
import os
import time

import numpy as np

from monosem_jax.corpus import dataset
from monosem_jax.gpt import artifact as gpt_artifact
from monosem_jax.gpt import context_probe, data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-tokens", type=int, default=65536)
    args = parser.parse_args()
    t0 = time.time()
    model_cfg, params, step = gpt_artifact.load_trained(args.workdir)
    data_dir = os.path.join(args.workdir, "data")
    split = dataset.load_split(data_dir, "eval")
    concepts = dataset.load_meta(data_dir).get("concepts") or []
    probe = context_probe.ProbeConfig(num_pairs=args.pairs, seed=args.seed)
    out = {"lm_step": step, **context_probe.topic_context_gain(model_cfg, params, split, concepts,
                                                               probe)}
    windows = data.eval_windows(np.asarray(split.tokens_N), length=model_cfg.context_len,
                                max_tokens=args.eval_tokens, multiple=32)
    out["loss_by_position"] = context_probe.loss_by_position(model_cfg, params, windows, 32)
    out["wall_s"] = time.time() - t0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
