"""A trained SAE as an artifact: its run folder holds everything needed to use it.

`W/sae/<name>/` (or a copy of it anywhere) has `config.json` (the SAE's shape and variant, the
final hyper-parameters, the hook and the store's `norm_scale`) and `checkpoints/`; `load_run`
needs nothing else (no activation store, no LM). Runs written before `norm_scale` was recorded
fall back to reading it from the store they were trained on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp

from monosem_jax import checkpoint, metrics_io, parallel
from monosem_jax.activations import store as store_lib
from monosem_jax.sae import model as sae_model
from monosem_jax.sae import step as sae_step


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "hparams"],
    meta_fields=["name", "sae_cfg", "hook", "norm_scale", "step"],
)
@dataclasses.dataclass(frozen=True)
class TrainedSAE:
    """A finished SAE run, ready for analysis.

    A pytree: its arrays (params, hparams) are the leaves and the rest is static, so a jitted
    function takes the whole run as one argument.
    """

    name: str
    sae_cfg: sae_model.SAEConfig
    params: dict
    hparams: dict  # device hyper-parameters at the end of the schedule (e.g. the final k)
    hook: str
    norm_scale: float  # SAE inputs are hook activations x norm_scale (E||x|| = sqrt(d))
    step: int


# ----------------------------------------------------------------------------- the SAE at its hook
# Inputs and outputs in the hook's own units; the SAE sees them x norm_scale.


def reconstruct(sae: TrainedSAE, x_BLD: jax.Array) -> jax.Array:
    """The SAE's reconstruction of hook activations, in the hook's own units."""
    x_ND = x_BLD.reshape(-1, x_BLD.shape[-1]).astype(jnp.float32) * sae.norm_scale
    f_NF = sae_model.encode(sae.sae_cfg, sae.params, x_ND, sae.hparams)
    xhat_ND = sae_model.decode(sae.params, f_NF) / sae.norm_scale
    return xhat_ND.reshape(x_BLD.shape).astype(x_BLD.dtype)


def feature_acts(sae: TrainedSAE, x_BLD: jax.Array) -> jax.Array:
    """Reported feature activations [B, L, F] of hook activations."""
    x_ND = x_BLD.reshape(-1, x_BLD.shape[-1]).astype(jnp.float32) * sae.norm_scale
    f_NF = sae_model.feature_acts(sae.sae_cfg, sae.params, x_ND, sae.hparams)
    return f_NF.reshape(*x_BLD.shape[:-1], -1)


def feature_directions(sae: TrainedSAE, ids_K: jax.Array) -> jax.Array:
    """d_k [K, D]: feature k's contribution to the reconstruction per unit of its reported
    activation, in hook units (the direction a clamp or steer moves along)."""
    w_KD = sae.params["w_dec_FD"][ids_K]
    return w_KD / (sae_model.row_norms(w_KD)[:, None] * sae.norm_scale)


def typed_hparams(hp: dict) -> dict:
    """The entries of a recorded hyper-parameter dict that the step takes."""
    return {k: v for k, v in hp.items() if k in sae_step.HPARAM_KEYS}


def training_store(store: str, hook: str, workdir: str) -> store_lib.Store:
    """The activation store an SAE config names: `store` (a path or a JSON TensorStore kvstore
    spec), else W/acts; at `hook`."""
    root = store or os.path.join(workdir, "acts")
    if isinstance(root, str) and root.lstrip().startswith("{"):
        root = json.loads(root)
    return store_lib.open_store(store_lib.kvstore_for(root), hook)


def load_run(run_dir: str) -> TrainedSAE:
    """Loads the SAE run folder `run_dir` (its config.json and latest checkpoint)."""
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{run_dir} is not an SAE run (no config.json)")
    recorded = metrics_io.read_json(config_path)
    sae_cfg = sae_model.SAEConfig(**recorded["sae_config"])
    ckpt = checkpoint.Checkpointer(os.path.join(run_dir, "checkpoints"), save_every=1,
                                   this_process_only=True)
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"SAE run {run_dir} has no checkpoint; train it first")
    abstract = jax.eval_shape(lambda: sae_step.init_state(sae_cfg, jax.random.key(0)))
    # Replicated over this process's own devices, like the LM; only the SAE's state (a run
    # trained with source "lm" also saved its feed's buffer beside it).
    state = ckpt.restore_part(
        checkpoint.with_sharding(abstract, parallel.replicated(parallel.local_mesh())), step
    )
    ckpt.close()
    hp = sae_step.default_hparams(sae_cfg, **typed_hparams(recorded["hparams"]))
    config = recorded["sae"]
    norm_scale = recorded.get("norm_scale")
    if norm_scale is None:  # a run from before norm_scale was recorded: ask its store
        workdir = os.path.dirname(os.path.dirname(os.path.abspath(run_dir)))
        norm_scale = training_store(config["store"], config["hook"], workdir).norm_scale
    return TrainedSAE(
        name=os.path.basename(os.path.normpath(run_dir)),
        sae_cfg=sae_cfg,
        params=state["params"],
        hparams=sae_step.scheduled(hp, int(recorded["hparams"]["total_steps"])),
        hook=recorded.get("hook", config["hook"]),
        norm_scale=float(norm_scale),
        step=step,
    )


def load_sae(workdir: str, name: str) -> TrainedSAE:
    """Loads `W/sae/<name>`; name "" is the work dir's pipeline SAE (resolve_sae_name)."""
    name = metrics_io.resolve_sae_name(workdir, name)
    run_dir = os.path.join(workdir, "sae", name)
    if not os.path.exists(os.path.join(run_dir, "config.json")):
        sae_dir = os.path.join(workdir, "sae")
        runs = sorted(os.listdir(sae_dir)) if os.path.isdir(sae_dir) else []
        raise FileNotFoundError(
            f"no SAE run '{name}' in {workdir}/sae (found: {', '.join(runs) or 'none'}); "
            "train one with monosem-train-sae"
        )
    return load_run(run_dir)
