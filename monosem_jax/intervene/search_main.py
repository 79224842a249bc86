"""monosem-search: the SAE features a prompt activates, or contrastive search between two
prompt sets (prompts joined by "||"); writes W/search/<name>.json.

monosem-search --workdir=W --config.prompt="The fish swam in the sea."
monosem-search --workdir=W --config.with_prompts="a||b" --config.without_prompts="c||d"
"""

from monosem_jax import cli
from monosem_jax.intervene import search


def run_main():
    cli.define_flags(cli.default_config("search/default.py"))
    cli.run(search.search)


if __name__ == "__main__":
    run_main()
