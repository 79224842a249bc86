"""monosem-capture: stores hook activations of the trained GPT in W/acts (TensorStore zarr3).

  monosem-capture --workdir=W [--config=monosem_jax/configs/capture/default.py] [--config.hooks=...]
"""

from monosem_jax import cli
from monosem_jax.activations import capture


def run_main():
    cli.define_flags(cli.default_config("capture/default.py"))
    cli.run(capture.capture)


if __name__ == "__main__":
    run_main()
