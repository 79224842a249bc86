"""List-valued config fields: tuples, command-line tuples and the old comma strings agree."""

import pytest

from monosem_jax import config_values


@pytest.mark.parametrize(
    "value", [("a", "b"), ["a", "b"], "a,b", ("a,b",), " a , b ,", ("a", "", " b")]
)
def test_str_tuple_accepts_tuples_and_comma_strings(value):
    assert config_values.str_tuple("hooks", value) == ("a", "b")


def test_empty_values_are_empty_tuples():
    for value in ("", (), None, " , "):
        assert config_values.int_tuple("resample_steps", value) == ()


def test_numbers():
    assert config_values.int_tuple("prefixes", "64,256") == (64, 256)
    assert config_values.int_tuple("prefixes", (64, 256)) == (64, 256)
    assert config_values.float_tuple("clamp_values", "0.5,-2") == (0.5, -2.0)
    assert config_values.float_tuple("clamp_values", 3) == (3.0,)


@pytest.mark.parametrize(
    "cast, value", [(config_values.int_tuple, "64,x"), (config_values.int_tuple, "1.5"),
                    (config_values.float_tuple, ("0.1", "nope"))]
)
def test_bad_items_are_one_clear_error(cast, value):
    with pytest.raises(ValueError, match=r"^config\.field=.* is invalid; valid: "):
        cast("field", value)


def _parse(config_file: str, *overrides: str):
    """The real command-line path: absl flags + ml_collections' config_file flag, in-process."""
    from absl import flags
    from ml_collections import config_flags

    from monosem_jax import cli

    flag_values = flags.FlagValues()
    argv = ["prog", f"--config={cli.default_config(config_file)}", *overrides]
    config_flags.DEFINE_config_file("config", argv[1].split("=", 1)[1], flag_values=flag_values,
                                    sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def test_command_line_lists_reach_the_stages():
    from monosem_jax.sae import run as sae_run
    from monosem_jax.sae import sweep as sae_sweep

    config = _parse("sae/default.py", "--config.sweep.grid=k=4,8 seed=0,1",
                    "--config.prefixes=64,256", "--config.resample_steps=100")
    assert sae_sweep.parse_grid(config.sweep.grid) == [
        {"k": 4, "seed": 0}, {"k": 4, "seed": 1}, {"k": 8, "seed": 0}, {"k": 8, "seed": 1}]
    cfg = sae_run.TrainConfig.from_config(config)
    assert (cfg.prefixes, cfg.resample_steps) == ((64, 256), (100,))
    hooks = "blocks.0.hook_resid_post,blocks.1.hook_mlp_out"
    config = _parse("capture/default.py", f"--config.hooks={hooks}")
    assert config_values.str_tuple("hooks", config.hooks) == tuple(hooks.split(","))
    assert sae_sweep.parse_grid(_parse("sae/default.py").sweep.grid) == [
        {"k": k} for k in (8, 16, 32, 64)]
