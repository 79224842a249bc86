"""The import stage: a SAELens SAE folder turned into the SAE run W/sae/<name>/.

The run is what `sae/artifact.load_run` reads (config.json and a real Orbax checkpoint of the
whole train state, its parameters the converted ones: interop/saelens_format.py), plus
summary.json and, from a sparsity.safetensors, feature_density.npy. Everything is checked before
anything is written (the files, the architecture, every tensor, the hook against this work dir's
LM); the run is built in a temporary folder of W and renamed into place, and an existing run is
never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from monosem_jax import atomic_dirs, checkpoint, metrics_io, stage_config, workdir_lock
from monosem_jax.gpt import model as gpt_model
from monosem_jax.interop import saelens_files
from monosem_jax.interop import saelens_format as fmt
from monosem_jax.sae import artifact as sae_artifact
from monosem_jax.sae import model as sae_model
from monosem_jax.sae import step as sae_step


@dataclasses.dataclass(frozen=True)
class ImportConfig:
    """Validated settings of `monosem-import` (configs/sae_import/default.py documents each)."""

    name: str = ""
    hook: str = ""

    def __post_init__(self):
        stage_config.path_component("name", self.name, allow_empty=True)  # "" = --from's name


def import_sae(config: ml_collections.ConfigDict, workdir: str, source: str | None) -> dict:
    """Converts the SAELens folder `source` into W/sae/<config.name>; returns the summary."""
    cfg = stage_config.from_config(ImportConfig, config)
    if not source:
        raise ValueError("--from is required: the SAELens SAE folder to import")
    src = os.path.abspath(os.path.expanduser(source))
    name = stage_config.path_component("name", cfg.name or os.path.basename(src))
    with workdir_lock.hold(workdir, f"sae-{name}", enabled=jax.process_index() == 0):
        return _import_run(cfg, workdir, src, name)


def _import_run(cfg: ImportConfig, workdir: str, src: str, name: str) -> dict:
    run_dir = os.path.join(workdir, "sae", name)
    if os.path.lexists(run_dir):
        raise FileExistsError(f"{run_dir} already exists; import under another --config.name "
                              "(nothing was written)")
    model_cfg = _lm_config(workdir)

    saelens_cfg, tensors, sparsity = saelens_files.read_folder(src)
    imported = fmt.from_saelens(saelens_cfg, tensors, where=src)
    hook = _checked_hook(cfg.hook or imported.hook, model_cfg, imported.sae_config["d"], src)
    sae_cfg = sae_model.SAEConfig(**imported.sae_config)
    hparams = {**imported.hparams}
    hparams.setdefault("total_steps", 1)  # load_run schedules the hparams at total_steps
    sae_step.validate_hparams(sae_cfg, sae_step.default_hparams(
        sae_cfg, **sae_artifact.typed_hparams(hparams)))
    density_F = None
    if sparsity is not None:
        if np.shape(sparsity) != (sae_cfg.d_sae,) or not np.all(np.isfinite(sparsity)):
            raise ValueError(f"{src}/{fmt.SPARSITY_FILENAME}: tensor sparsity is not "
                             f"{sae_cfg.d_sae} finite values")
        density_F = fmt.density_of(sparsity).astype(np.float32)
    metadata = saelens_cfg.get("metadata") if isinstance(saelens_cfg.get("metadata"), dict) else {}
    step = int(metadata.get(fmt.METADATA_KEY, {}).get("step", 0)) if imported.ours else 0

    recorded = {
        # The stage's own record; "store" is empty: the run has no store (norm_scale is below).
        "sae": {"name": name, "variant": sae_cfg.variant, "hook": hook, "store": "",
                "d_sae": sae_cfg.d_sae, "imported_from": src},
        "sae_config": dataclasses.asdict(sae_cfg),
        "hparams": hparams,
        "seed": 0,
        "hook": hook,
        "norm_scale": imported.norm_scale,
        "imported": {
            "from": src,
            "architecture": saelens_cfg.get("architecture", "standard"),
            "apply_b_dec_to_input": saelens_cfg.get("apply_b_dec_to_input", True),
            "restored_variant": imported.ours,
            "folds": list(imported.notes),
            "metadata": metadata,
        },
    }
    summary = {
        "name": name,
        "run_dir": run_dir,
        "variant": sae_cfg.variant,
        "d": sae_cfg.d,
        "d_sae": sae_cfg.d_sae,
        "hook": hook,
        "norm_scale": imported.norm_scale,
        "imported_from": src,
        "architecture": recorded["imported"]["architecture"],
        "restored_variant": imported.ours,
        "folds": list(imported.notes),
        "step": step,
    }
    _write_run(workdir, run_dir, sae_cfg, imported.params, step, recorded, density_F, summary)
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


def _lm_config(workdir: str) -> gpt_model.GPTConfig:
    model_path = os.path.join(workdir, "lm", "model.json")
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"no trained LM in {workdir}/lm; an imported SAE reads one of its "
                                "hooks (run monosem-train-lm or monosem-pipeline first)")
    return gpt_model.GPTConfig(**metrics_io.read_json(model_path))


def _checked_hook(hook, model_cfg: gpt_model.GPTConfig, d_in: int, src: str) -> str:
    """The hook, known to this LM and as wide as the SAE's input."""
    if not hook:
        raise ValueError(f"{src}/{fmt.CFG_FILENAME} records no metadata.hook_name; name the hook "
                         "with --config.hook")
    if not isinstance(hook, str):
        raise ValueError(f"{src}/{fmt.CFG_FILENAME}: metadata.hook_name={hook!r} is not a name")
    try:
        gpt_model.check_hooks(model_cfg, [hook])
    except ValueError as e:
        raise ValueError(f"{src}: {e} (override with --config.hook)") from e
    width = gpt_model.hook_dim(model_cfg, hook)
    if d_in != width:
        raise ValueError(f"{src}: d_in={d_in} does not match hook {hook} of this work dir's LM "
                         f"(width {width})")
    return hook


def _write_run(workdir: str, run_dir: str, sae_cfg: sae_model.SAEConfig, params: dict,
               step: int, recorded: dict, density_F, summary: dict) -> None:
    """The run folder, built in a temporary folder of W and renamed to `run_dir`."""
    expected = jax.eval_shape(lambda: sae_model.init_params(sae_cfg, jax.random.key(0)))
    if set(expected) != set(params) or any(
            expected[n].shape != np.shape(params[n]) for n in expected):
        raise ValueError(f"converted parameters {sorted(params)} do not fit a "
                         f"{sae_cfg.variant} SAE")  # a bug of the conversion, not the input
    tmp = atomic_dirs.temp_dir(workdir, f"sae-import-{os.path.basename(run_dir)}")
    try:
        state = sae_step.init_state(sae_cfg, jax.random.key(0))
        state["params"] = {n: jnp.asarray(v, jnp.float32) for n, v in params.items()}
        state["step"] = jnp.asarray(step, jnp.int32)
        ckpt = checkpoint.Checkpointer(os.path.join(tmp, "checkpoints"), save_every=1,
                                       this_process_only=True)
        ckpt.save(step, state, {"step": step, "members": [summary["name"]],
                                "imported_from": recorded["imported"]["from"]}, force=True)
        ckpt.close()
        metrics_io.write_json_atomic(os.path.join(tmp, "config.json"), recorded)
        if density_F is not None:
            np.save(os.path.join(tmp, "feature_density.npy"), density_F)
        metrics_io.write_json_atomic(os.path.join(tmp, "summary.json"), summary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
        os.makedirs(os.path.dirname(run_dir), exist_ok=True)
        if os.path.lexists(run_dir):  # appeared while converting
            raise FileExistsError(f"{run_dir} already exists; import under another "
                                  "--config.name (nothing was written)")
        os.rename(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
