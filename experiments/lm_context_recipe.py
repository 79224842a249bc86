"""Which LM recipe carries the story's topic within the CPU budget? Trains the tiny GPT with
config overrides and prints, every --probe-every steps, the wall time, eval loss and topic
context gain (monosem_jax/gpt/context_probe.py), so a phase change shows up with its time.

  monosem-prepare --workdir /tmp/ctx                       # the default corpus, once
  python experiments/lm_context_recipe.py --workdir /tmp/ctx --set model.positional=rope \
      --set train.steps=1000 --probe-every 125

Each probe line and the final line are JSON; the final one is the whole trajectory.
"""

import argparse
import ast
import json
import os
import time

import jax
import numpy as np

from monosem_jax import parallel
from monosem_jax.configs.gpt import tiny as gpt_tiny
from monosem_jax.corpus import dataset
from monosem_jax.gpt import context_probe, data
from monosem_jax.gpt import step as gpt_step


def _override(config, assignment: str):
    key, value = assignment.split("=", 1)
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    try:
        node[leaf] = type(node[leaf])(ast.literal_eval(value))
    except (ValueError, SyntaxError):
        node[leaf] = value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a work dir with data/ (monosem-prepare)")
    parser.add_argument("--set", action="append", default=[], help="lm config override k=v")
    parser.add_argument("--probe-every", type=int, default=125)
    parser.add_argument("--pairs", type=int, default=200)
    args = parser.parse_args()
    config = gpt_tiny.get_config()
    for assignment in args.set:
        _override(config, assignment)
    model_cfg, cfg = gpt_step.configs_from(config)
    data_dir = os.path.join(args.workdir, "data")
    train_split = dataset.load_split(data_dir, "train")
    eval_split = dataset.load_split(data_dir, "eval")
    concepts = dataset.load_meta(data_dir).get("concepts") or []
    length = model_cfg.context_len
    eval_WL1 = data.eval_windows(np.asarray(eval_split.tokens_N), length=length,
                                 max_tokens=32768, multiple=cfg.batch_size)
    mesh = parallel.make_mesh()
    state = jax.device_put(gpt_step.init_state(model_cfg, cfg), parallel.replicated(mesh))
    step_fn = gpt_step.compile_train_step(model_cfg, cfg)
    probe = context_probe.ProbeConfig(num_pairs=args.pairs)
    rows, train_s = [], 0.0
    tokens = np.asarray(train_split.tokens_N)
    for step in range(cfg.steps):
        t0 = time.time()
        batch = data.train_batch(tokens, seed=cfg.seed, step=step, batch_size=cfg.batch_size,
                                 length=length)
        state, metrics = step_fn(state, parallel.global_batch(mesh, batch))
        done = step + 1
        if done % args.probe_every == 0 or done == cfg.steps:
            loss = float(metrics["loss"])
            train_s += time.time() - t0
            row = {"step": done, "train_s": round(train_s, 1), "train_loss": loss,
                   "eval_loss": gpt_step.evaluate(state["params"], eval_WL1, model_cfg,
                                                   cfg.batch_size, mesh)}
            row.update(context_probe.topic_context_gain(model_cfg, state["params"], eval_split,
                                                        concepts, probe))
            rows.append(row)
            print(json.dumps(row), flush=True)
        else:
            if step > 0:
                jax.block_until_ready(metrics["loss"])
            train_s += time.time() - t0
    final = {"overrides": args.set, "params": sum(x.size for x in jax.tree.leaves(state["params"])),
             "tokens_per_step": cfg.batch_size * length, "trajectory": rows}
    final["loss_by_position"] = context_probe.loss_by_position(model_cfg, state["params"],
                                                               eval_WL1, cfg.batch_size)
    print(json.dumps(final))


if __name__ == "__main__":
    main()
