"""monosem-sweep: N SAE configurations of one shape in one compiled program, sharing batches.

monosem-sweep --workdir=W --config.sweep.grid="l1_coef=1,2,4,8 lr=4e-4,1e-3"
"""

from monosem_jax import cli
from monosem_jax.sae import sweep


def run_main():
    cli.define_flags(cli.default_config("sae/default.py"))
    cli.run(sweep.sweep)


if __name__ == "__main__":
    run_main()
