"""monosem-train-lm: trains the GPT on W/data (from monosem-prepare), resuming from W/lm.

monosem-train-lm --config=monosem_jax/configs/gpt/tiny.py --workdir=W
"""

from monosem_jax import cli
from monosem_jax.gpt import train


def run_main():
    cli.define_flags(cli.default_config("gpt/tiny.py"))
    cli.run(train.train_and_evaluate)


if __name__ == "__main__":
    run_main()
