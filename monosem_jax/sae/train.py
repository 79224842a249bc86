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

from monosem_jax import metrics_io
from monosem_jax.sae import loop
from monosem_jax.sae import run as sae_run


def train_sae(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains one SAE (resuming from its checkpoints) and writes its summary."""
    t_start = time.time()
    cfg = sae_run.TrainConfig.from_config(config)
    st = cfg.training_store(workdir)
    spec = sae_run.run_spec(cfg, workdir, st.d)
    summary_path = os.path.join(spec.run_dir, "summary.json")
    if os.path.exists(summary_path):
        logging.info("SAE run %s already finished; nothing to do", spec.name)
        return metrics_io.finish_summary(summary_path, metrics_io.read_json(summary_path))
    sae_run.record_config(spec, cfg, st.norm_scale)
    trained = loop.train_members(
        cfg, st, [spec], out_dir=spec.run_dir, strategy="single",
        data_seed=cfg.data_seed if cfg.data_seed >= 0 else spec.seed, resample_seed=spec.seed,
    )
    return sae_run.finish_run(spec, trained.states["params"], trained.hps, trained.eval_ND,
                              trained.stats(0), t_start)
