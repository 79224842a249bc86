"""The export stage: one SAE run of a work dir written as a SAELens SAE folder.

DIR/cfg.json, DIR/sae_weights.safetensors and, when the run recorded its feature densities
(W/sae/<name>/feature_density.npy), DIR/sparsity.safetensors; the conversion is
interop/saelens_format.py (decoder norms and the store's norm_scale folded into the weights, so
SAELens's encode of hook activations gives our reported activations and its decode our
reconstruction). The folder is written atomically and never over an existing non-empty one.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np

from monosem_jax import metrics_io, stage_config
from monosem_jax.interop import saelens_files
from monosem_jax.interop import saelens_format as fmt
from monosem_jax.sae import artifact as sae_artifact


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Validated settings of `monosem-export` (configs/export/default.py documents each)."""

    sae_name: str = ""
    model_name: str = ""


def export_sae(config: ml_collections.ConfigDict, workdir: str, out: str | None) -> dict:
    """Writes W/sae/<config.sae_name> as a SAELens SAE folder `out`; returns the summary."""
    cfg = stage_config.from_config(ExportConfig, config)
    if not out:
        raise ValueError("--out is required: the new folder to write the SAELens SAE into")
    out_dir = os.path.abspath(os.path.expanduser(out))
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise FileExistsError(f"--out {out_dir} exists and is not an empty folder; export into "
                              "a new one (nothing was written)")
    sae = sae_artifact.load_sae(workdir, cfg.sae_name)
    run_dir = os.path.join(workdir, "sae", sae.name)
    recorded = metrics_io.read_json(os.path.join(run_dir, "config.json"))
    params = {name: np.asarray(jax.device_get(v)) for name, v in sae.params.items()}
    variant = sae.sae_cfg.variant
    k = int(jax.device_get(sae.hparams["k"]))
    saelens_cfg, tensors = fmt.to_saelens(variant, params, sae.norm_scale, k)
    saelens_cfg["metadata"] = {
        **lm_metadata(workdir, sae.hook, cfg.model_name),
        fmt.METADATA_KEY: {
            # What an import needs to give back exactly this SAE (saelens_format.from_saelens).
            "variant": variant,
            "sae_name": sae.name,
            "step": sae.step,
            "norm_scale": sae.norm_scale,
            "folded": "decoder norms, then norm_scale s: W_enc*s, W_dec/s, b_dec/s",
            "sae_config": dataclasses.asdict(sae.sae_cfg),
            "hparams": recorded.get("hparams", {}),
            "workdir": workdir,
        },
    }
    density_path = os.path.join(run_dir, "feature_density.npy")
    sparsity = fmt.log_sparsity(np.load(density_path)) if os.path.exists(density_path) else None
    saelens_files.write_folder(out_dir, saelens_cfg, tensors, sparsity)
    summary = {
        "out": out_dir,
        "sae_name": sae.name,
        "variant": variant,
        "architecture": saelens_cfg["architecture"],
        "apply_b_dec_to_input": saelens_cfg["apply_b_dec_to_input"],
        "d_in": saelens_cfg["d_in"],
        "d_sae": saelens_cfg["d_sae"],
        **({"k": saelens_cfg["k"]} if "k" in saelens_cfg else {}),
        "hook": sae.hook,
        "norm_scale_folded": sae.norm_scale,
        "sparsity": sparsity is not None,
        "files": sorted(os.listdir(out_dir)),
    }
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


def lm_metadata(workdir: str, hook: str, model_name: str = "") -> dict:
    """cfg.json's SAELens metadata fields for the work dir's LM (sae.py SAEMetadata accepts any
    key; LLM_METADATA_KEYS of loading/pretrained_sae_loaders.py are the ones SAELens reads)."""
    model_path = os.path.join(workdir, "lm", "model.json")
    model = metrics_io.read_json(model_path) if os.path.exists(model_path) else None
    if not model_name:
        model_name = ("monosem_jax_gpt" if model is None else
                      f"monosem_jax_gpt_{model['n_layers']}l_{model['d_model']}d")
    corpus_path = os.path.join(workdir, "corpus", "summary.json")
    corpus = metrics_io.read_json(corpus_path) if os.path.exists(corpus_path) else {}
    return {
        "sae_lens_version": fmt.SAELENS_FORMAT_VERSION,  # >= 6: the metadata is nested
        "sae_lens_training_version": None,  # not trained by SAELens
        "model_name": model_name,
        "model_class_name": "monosem_jax.gpt.model.GPT",
        "hook_name": hook,
        "hook_layer": fmt.hook_layer(hook),  # SAEBench reads it
        "hook_head_index": None,
        "context_size": None if model is None else model["context_len"],
        # Contexts are windows of the packed token stream (EOT between documents), no BOS added.
        "prepend_bos": False,
        "dataset_path": os.path.join(workdir, "data"),
        "corpus_source": corpus.get("source"),
        "lm_config": model,
    }
