"""monosem-steer: generates with SAE features clamped at their hook, baseline alongside.

monosem-steer --workdir=W --config.features=123 --config.clamp_values=-2,2,5,10
"""

from monosem_jax import cli
from monosem_jax.intervene import steer


def run_main():
    cli.define_flags(cli.default_config("steer/default.py"))
    cli.run(steer.run)


if __name__ == "__main__":
    run_main()
