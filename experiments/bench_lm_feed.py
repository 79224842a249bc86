"""Training without a store: the SAE stage's tokens/s with source "lm" against the store path.

Question (issue 13): how fast does `monosem-train-sae --config.source=lm` (the LM forward and
the SAE step in one jitted program, through an on-device shuffle buffer) train, against the
store path (capture the train split, then train on the store), on the same LM and machine, and
does it reach the store-trained SAE's held-out EV at equal tokens (goal: within 0.01)?

  python experiments/bench_lm_feed.py --workdir=W          # W: a trained LM (W/data, W/lm)
  python experiments/bench_lm_feed.py --smoke              # builds the smoke LM in a temp folder

Runs, one after the other in this process (one CPU device), in a scratch copy of W/data and
W/lm: the capture stage (the SAE hook, the rest its default config: the whole train split),
the default SAE on that store, and the default SAE with source "lm" (same steps x batch).
"SAE tokens" are the SAE's rows (steps x batch_size), as in its summary.

The last stdout line is one JSON object: capture rows/s, each path's SAE tokens/s (the loop's
steady rate, first step excluded) and end-to-end tokens/s (SAE tokens over the stages' wall
time: capture + store SAE, or the lm run alone), both SAEs' held-out EV on the same rows (the eval
split's, each SAE in its own input units), and the load averages before and after each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as `python experiments/bench_lm_feed.py` from anywhere
    sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from monosem_jax import parallel  # noqa: E402
from monosem_jax.activations import capture  # noqa: E402
from monosem_jax.configs.capture import default as capture_default  # noqa: E402
from monosem_jax.configs.sae import default as sae_default  # noqa: E402
from monosem_jax.sae import artifact as sae_artifact  # noqa: E402
from monosem_jax.sae import lm_feed  # noqa: E402
from monosem_jax.sae import metrics as sae_metrics  # noqa: E402
from monosem_jax.sae import run as sae_run  # noqa: E402
from monosem_jax.sae import train as sae_train  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="", help="a work dir with a trained LM (W/data, W/lm)")
    ap.add_argument("--smoke", action="store_true",
                    help="the smoke configs; without --workdir, trains the smoke LM first")
    ap.add_argument("--steps", type=int, default=0, help="SAE steps (0: the config's)")
    ap.add_argument("--variant", default="", help="SAE variant ('': the config's, topk)")
    ap.add_argument("--scratch", default="", help="folder for the runs ('': a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args(argv)
    if not args.workdir and not args.smoke:
        ap.error("give --workdir=W (a trained LM) or --smoke")
    return args


def scratch_copy(workdir: str, scratch: str, smoke: bool) -> str:
    """W/data, W/lm (and the tokenizer) copied to scratch/w; the smoke LM trained there when no
    work dir is given."""
    dst = os.path.join(scratch, "w")
    if not workdir:
        from monosem_jax.configs.pipeline import tiny
        from monosem_jax.corpus import prepare
        from monosem_jax.gpt import train as gpt_train

        config = tiny.get_config("smoke" if smoke else "")
        prepare.prepare(config, dst)
        gpt_train.train_and_evaluate(config.lm, dst)
        return dst
    os.makedirs(dst)
    for name in ("data", "lm", "tokenizer.json"):
        src = os.path.join(workdir, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dst, name))
        elif os.path.exists(src):
            shutil.copy(src, dst)
    return dst


def held_out_ev(config, workdir: str, names: tuple[str, ...]) -> dict:
    """Each SAE's explained variance on the lm feed's held-out rows (the eval split's), in its
    own input units (hook activations x its norm_scale)."""
    cfg = sae_run.TrainConfig.from_config(config)
    feed = lm_feed.LMFeed(cfg, workdir, cfg.seed, parallel.make_mesh())
    hook_ND = feed.eval_rows() / np.float32(feed.norm_scale)
    feed.close()
    out = {}
    for name in names:
        sae = sae_artifact.load_run(os.path.join(workdir, "sae", name))
        metrics, _ = sae_metrics.evaluate(sae.sae_cfg, sae.params, sae.hparams,
                                          hook_ND * np.float32(sae.norm_scale))
        out[name] = metrics["explained_variance"]
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    arg = "smoke" if args.smoke else ""
    scratch = args.scratch or tempfile.mkdtemp(prefix="bench_lm_feed_")
    load_before = os.getloadavg()
    try:
        workdir = scratch_copy(args.workdir, scratch, args.smoke)

        def sae_config(**overrides):
            config = sae_default.get_config(arg)
            if args.steps:
                config.steps = args.steps
            if args.variant:
                config.variant = args.variant
            config.update(overrides)
            return config

        cap_config = capture_default.get_config(arg)
        cap_config.hooks = (sae_config().hook,)
        t = time.time()
        cap = capture.capture(cap_config, workdir)
        capture_wall = time.time() - t
        load = {"before": load_before, "after_capture": os.getloadavg()}
        store = sae_train.train_sae(sae_config(name="store", source="store"), workdir)
        load["after_store_sae"] = os.getloadavg()
        lm = sae_train.train_sae(sae_config(name="lm", source="lm"), workdir)
        load["after_lm_sae"] = os.getloadavg()
        ev = held_out_ev(sae_config(source="lm"), workdir, ("store", "lm"))
        cfg = sae_run.TrainConfig.from_config(sae_config(source="lm"))
        sae_tokens = cfg.steps * cfg.batch_size
        result = {
            "device": jax.devices()[0].device_kind,
            "cpu_count": os.cpu_count(),
            "variant": store["variant"],
            "d": store["d"],
            "d_sae": store["d_sae"],
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "sae_tokens": sae_tokens,
            "capture_rows": cap["rows"],
            "capture_rows_per_s": cap["rows"] / capture_wall,
            "capture_lm_tokens_per_s": cap["tokens_per_s"],
            "capture_wall_s": capture_wall,
            "store_bytes": cap["bytes"],
            "store_sae_tokens_per_s": store["tokens_per_s"],
            "store_sae_wall_s": store["wall_s"],
            "store_end_to_end_tokens_per_s": sae_tokens / (capture_wall + store["wall_s"]),
            "lm_sae_tokens_per_s": lm["tokens_per_s"],
            "lm_wall_s": lm["wall_s"],
            "lm_end_to_end_tokens_per_s": sae_tokens / lm["wall_s"],
            "lm_buffer_bytes": cfg.lm_buffer_batches * cfg.batch_size * store["d"] * 4,
            "held_out_ev_store": ev["store"],
            "held_out_ev_lm": ev["lm"],
            "ev_delta_lm_minus_store": ev["lm"] - ev["store"],
            "loadavg": load,  # 1, 5 and 15 min load averages (the machine is shared)
        }
        result["lm_over_store_sae"] = (result["lm_sae_tokens_per_s"]
                                       / result["store_sae_tokens_per_s"])
        result["lm_over_store_end_to_end"] = (result["lm_end_to_end_tokens_per_s"]
                                              / result["store_end_to_end_tokens_per_s"])
    finally:
        if not args.keep and not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
