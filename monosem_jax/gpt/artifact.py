"""A trained LM as an artifact: `W/lm/model.json` (its shape) and `W/lm/checkpoints/`.

Loading needs neither the trainer nor its optimiser: only the parameters are restored.
"""

from __future__ import annotations

import os

import jax

from monosem_jax import checkpoint, metrics_io, parallel
from monosem_jax.gpt import model as gpt_model


def load_trained(workdir: str) -> tuple[gpt_model.GPTConfig, dict, int]:
    """(model config, params, step) of the LM trained in `workdir` (its latest checkpoint)."""
    lm_dir = os.path.join(workdir, "lm")
    model_path = os.path.join(lm_dir, "model.json")
    ckpt_dir = os.path.join(lm_dir, "checkpoints")
    if not os.path.exists(model_path) or not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(
            f"no trained LM in {lm_dir}; run monosem-train-lm (or monosem-pipeline) first"
        )
    model_cfg = gpt_model.GPTConfig(**metrics_io.read_json(model_path))
    ckpt = checkpoint.Checkpointer(ckpt_dir, save_every=1, this_process_only=True)
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"no LM checkpoint in {ckpt_dir}; run the LM stage first")
    # Restore replicated onto this process's own devices, whatever topology saved it (no other
    # process takes part: a stage that runs on process 0 alone, like the browser, loads it too).
    abstract = checkpoint.with_sharding(
        {"params": jax.eval_shape(lambda: gpt_model.init_params(model_cfg, jax.random.key(0)))},
        parallel.replicated(parallel.local_mesh()),
    )
    params = ckpt.restore_part(abstract, step)["params"]
    ckpt.close()
    return model_cfg, params, step
