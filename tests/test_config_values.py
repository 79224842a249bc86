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
