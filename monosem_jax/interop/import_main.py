"""monosem-import: a SAELens SAE folder turned into the SAE run W/sae/<name>/.

monosem-import --workdir=W --from=DIR --config.name=NAME [--config.hook=blocks.0.hook_resid_post]
"""

from monosem_jax import cli
from monosem_jax.interop import extra_flags, import_sae


def run_main():
    cli.define_flags(cli.default_config("sae_import/default.py"))
    source = extra_flags.define_path_flag(
        "from", "The SAELens SAE folder (cfg.json, sae_weights.safetensors) to import.")
    cli.run(lambda config, workdir: import_sae.import_sae(config, workdir, source()))


if __name__ == "__main__":
    run_main()
