"""monosem-train-sae: trains one SAE on a captured store, resuming from W/sae/<name>.

monosem-train-sae --workdir=W [--config=monosem_jax/configs/sae/default.py] [--config.variant=topk]
"""

from monosem_jax import cli
from monosem_jax.sae import train


def run_main():
    cli.define_flags(cli.default_config("sae/default.py"))
    cli.run(train.train_sae)


if __name__ == "__main__":
    run_main()
