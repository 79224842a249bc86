"""monosem_jax: sparse autoencoders on a small GPT, in JAX (see README.md).

The public API, imported on first use (``import monosem_jax`` stays light):

  sae = monosem_jax.load_sae_run("runs/default/sae/topk")   # an SAE run folder, anywhere
  sae = monosem_jax.load_sae("runs/default")                 # a work dir's pipeline SAE
  acts_BLF = monosem_jax.feature_acts(sae, x_BLD)            # reported activations, hook units
  xhat_BLD = monosem_jax.reconstruct(sae, x_BLD)
  model_cfg, lm_params, step = monosem_jax.load_lm("runs/default")
  summary = monosem_jax.train_sae(sae_config, "runs/default")   # config: configs/sae/default.py
  summary = monosem_jax.run_pipeline(config, "runs/default")  # config: configs/pipeline/tiny.py
"""

import importlib

_API = {
    "TrainedSAE": ("monosem_jax.sae.artifact", "TrainedSAE"),
    "load_sae_run": ("monosem_jax.sae.artifact", "load_run"),
    "load_sae": ("monosem_jax.sae.artifact", "load_sae"),
    "feature_acts": ("monosem_jax.sae.artifact", "feature_acts"),
    "reconstruct": ("monosem_jax.sae.artifact", "reconstruct"),
    "load_lm": ("monosem_jax.gpt.artifact", "load_trained"),
    "train_sae": ("monosem_jax.sae.train", "train_sae"),
    "run_pipeline": ("monosem_jax.pipeline", "run_pipeline"),
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'monosem_jax' has no attribute {name!r}")
    module, attr = _API[name]
    return getattr(importlib.import_module(module), attr)


def __dir__():
    return sorted([*globals(), *_API])
