"""monosem-export: one SAE run written as a SAELens SAE folder (cfg.json, sae_weights.safetensors,
sparsity.safetensors), which SAELens 6.x loads with `SAE.load_from_disk(DIR)`.

monosem-export --workdir=W --out=DIR                       (the pipeline's SAE)
monosem-export --workdir=W --config.sae_name=anthropic_2024 --out=DIR
monosem-export --workdir=W --config=monosem_jax/configs/export/default.py:smoke --out=DIR
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.sae_name = ""  # the run W/sae/<sae_name>; "" = the pipeline's SAE
    # cfg.json's metadata.model_name (SAELens and SAEBench load the LM by this name; ours is no
    # HuggingFace model); "" = "monosem_jax_gpt_<layers>l_<d_model>d" from W/lm/model.json.
    config.model_name = ""

    if arg and arg != "smoke":  # smoke: nothing to shrink (the export reads one run)
        raise ValueError(f"unknown config arg {arg!r}; use '' or 'smoke'")
    return config
