"""monosem-attribute: feature attribution vs true ablation for one prompt, written to
W/attribution/<name>.json and .png.

monosem-attribute --workdir=W --config.prompt="..." [--config.target=loss|logit:<token>]
"""

from monosem_jax import cli
from monosem_jax.intervene import attribution


def run_main():
    cli.define_flags(cli.default_config("attribution/default.py"))
    cli.run(attribution.attribute_prompt)


if __name__ == "__main__":
    run_main()
