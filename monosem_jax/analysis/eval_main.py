"""monosem-eval: evaluates one SAE run on held-out contexts, writing W/eval/<sae_name>.json.

monosem-eval --workdir=W [--config=monosem_jax/configs/eval/default.py] [--config.sae_name=topk16]
"""

from monosem_jax import cli
from monosem_jax.analysis import evaluate


def run_main():
    cli.define_flags(cli.default_config("eval/default.py"))
    cli.run(evaluate.evaluate)


if __name__ == "__main__":
    run_main()
