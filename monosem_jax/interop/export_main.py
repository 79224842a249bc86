"""monosem-export: one SAE run written as a SAELens SAE folder (SAE.load_from_disk(DIR) reads it).

monosem-export --workdir=W --out=DIR [--config.sae_name=topk]
"""

from monosem_jax import cli
from monosem_jax.interop import export, extra_flags


def run_main():
    cli.define_flags(cli.default_config("export/default.py"))
    out = extra_flags.define_path_flag(
        "out", "The new (absent or empty) folder to write cfg.json and the safetensors into.")
    cli.run(lambda config, workdir: export.export_sae(config, workdir, out()))


if __name__ == "__main__":
    run_main()
