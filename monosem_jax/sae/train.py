"""The SAE stage: one SAE trained on a captured store (the loop: sae/loop.py).

A run lives in `W/sae/<name>/`: Orbax checkpoints (resume is automatic: the data order is a pure
function of (seed, step)), `metrics.jsonl`, `feature_density.npy` (firing frequency of each
feature on the held-out rows), `config.json` (all that using the SAE needs: sae/artifact.py) and
`summary.json`.
"""

from __future__ import annotations

import os
import time

import ml_collections
from absl import logging

from monosem_jax import metrics_io, parallel, stage_config, workdir_lock
from monosem_jax.sae import loop
from monosem_jax.sae import run as sae_run


@workdir_lock.writer(
    lambda config: f"sae-{stage_config.path_component('name', config.name or config.variant)}")
def train_sae(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains one SAE (resuming from its checkpoints) and writes its summary."""
    t_start = time.time()
    cfg = sae_run.TrainConfig.from_config(config)
    sae_run.check_hparams(cfg)  # before the feed (its reader threads) opens
    mesh = parallel.make_mesh(cfg.model_parallel)
    feed = loop.open_feed(cfg, workdir, mesh)
    spec = sae_run.run_spec(cfg, workdir, feed.d)
    summary_path = os.path.join(spec.run_dir, "summary.json")
    if os.path.exists(summary_path):
        feed.close()
        logging.info("SAE run %s already finished; nothing to do", spec.name)
        return metrics_io.finish_summary(summary_path, metrics_io.read_json(summary_path))
    sae_run.record_config(spec, cfg, feed.norm_scale)
    trained = loop.train_members(cfg, feed, [spec], out_dir=spec.run_dir, strategy="single",
                                 resample_seed=spec.seed, mesh=mesh)
    return sae_run.finish_run(spec, trained.states["params"], trained.hps, trained.eval_ND,
                              trained.stats(0), t_start)
