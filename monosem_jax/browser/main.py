"""monosem-browse: writes the static feature browser of one SAE run to W/browser.

monosem-browse --workdir=W [--config.sae_name=topk16]
Then open W/browser/index.html in a browser (file://; no server needed).
"""

from monosem_jax import cli
from monosem_jax.browser import write


def run_main():
    cli.define_flags(cli.default_config("browse/default.py"))
    cli.run(write.browse)


if __name__ == "__main__":
    run_main()
