"""Stage config boundaries: each stage's ConfigDict becomes one frozen dataclass, bad values are
one clear error, list fields are tuples (old comma strings still read), fixed-size batches."""

import dataclasses

import ml_collections
import numpy as np
import pytest

from monosem_jax import batching, metrics_io, stage_config
from monosem_jax.activations import capture
from monosem_jax.analysis import evaluate
from monosem_jax.browser import write
from monosem_jax.configs.attribution import default as attribution_default
from monosem_jax.configs.browse import default as browse_default
from monosem_jax.configs.capture import default as capture_default
from monosem_jax.configs.eval import default as eval_default
from monosem_jax.configs.pipeline import tiny
from monosem_jax.configs.search import default as search_default
from monosem_jax.configs.steer import default as steer_default
from monosem_jax.corpus import prepare
from monosem_jax.gpt import step as gpt_step
from monosem_jax.intervene import attribution, search, steer

INVALID = r"^config\.{field}=.* is invalid; valid: "


def _steer_config(arg="", **overrides):
    config = steer_default.get_config(arg)
    config.features = (3, 7)
    config.update(overrides)
    return config


def _search_config(arg="", **overrides):
    config = search_default.get_config(arg)
    config.prompt = "The fish swam."
    config.update(overrides)
    return config


BOUNDARIES = [
    (capture.capture_config_from, capture_default.get_config),
    (evaluate.eval_config_from, eval_default.get_config),
    (write.browse_config_from, browse_default.get_config),
    (steer.steer_config_from, _steer_config),
    (search.search_config_from, _search_config),
    (lambda c: stage_config.from_config(attribution.AttributionConfig, c),
     attribution_default.get_config),
    (prepare.configs_from, tiny.get_config),
    (lambda c: gpt_step.configs_from(c.lm), tiny.get_config),
]


@pytest.mark.parametrize("convert, get_config", BOUNDARIES)
def test_default_configs_become_frozen_dataclasses(convert, get_config):
    for arg in ("", "smoke"):
        out = convert(get_config(arg))
        for cfg in out if isinstance(out, tuple) else (out,):
            assert dataclasses.is_dataclass(cfg)
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(cfg, dataclasses.fields(cfg)[0].name, None)
            hash(cfg)  # static-argument ready


def test_list_fields_are_tuples_and_old_comma_strings_still_read():
    assert capture.capture_config_from(capture_default.get_config()).hooks == (
        "blocks.0.hook_resid_post",)
    config = capture_default.get_config()
    for hooks in ("blocks.0.hook_resid_post, blocks.1.hook_mlp_out",  # --config.hooks=a,b
                  ("blocks.0.hook_resid_post", "blocks.1.hook_mlp_out")):
        config.hooks = hooks
        assert capture.capture_config_from(config).hooks == (
            "blocks.0.hook_resid_post", "blocks.1.hook_mlp_out")
    assert evaluate.eval_config_from(eval_default.get_config()).threshold_rates[:2] == (0.5, 0.3)
    cfg = steer.steer_config_from(_steer_config(clamp_values=("-1,4",)))
    assert cfg.features == (3, 7) and cfg.clamp_values == (-1.0, 4.0)
    old = ml_collections.ConfigDict(dict(eval_default.get_config().to_dict(),
                                         threshold_rates="0.5,0.3", probe_ks="5,1"))
    cfg = evaluate.eval_config_from(old)  # a ConfigDict written before the tuples
    assert cfg.threshold_rates == (0.5, 0.3) and cfg.probe.ks == (1, 5)


@pytest.mark.parametrize("convert, get_config, field, value", [
    (capture.capture_config_from, capture_default.get_config, "hooks", ()),
    (capture.capture_config_from, capture_default.get_config, "dtype", "float16"),
    (capture.capture_config_from, capture_default.get_config, "batch_size", 0),
    (evaluate.eval_config_from, eval_default.get_config, "threshold_rates", (0.5, 2.0)),
    (evaluate.eval_config_from, eval_default.get_config, "probe_ks", (0, 2)),
    (evaluate.eval_config_from, eval_default.get_config, "probe_train_fraction", 1.0),
    (write.browse_config_from, browse_default.get_config, "top_n", 0),
    (write.browse_config_from, browse_default.get_config, "split", "dev"),
    (steer.steer_config_from, _steer_config, "features", ()),
    (steer.steer_config_from, _steer_config, "clamp_values", (1.0, float("inf"))),
    (steer.steer_config_from, _steer_config, "scale", "median"),
    (search.search_config_from, _search_config, "top_n", 0),
    (search.search_config_from, _search_config, "score", "auc"),
    (lambda c: stage_config.from_config(attribution.AttributionConfig, c),
     attribution_default.get_config, "chunk", 0),
])
def test_a_bad_value_is_one_clear_error(convert, get_config, field, value):
    config = get_config()
    if convert is steer.steer_config_from:
        config.features = (3,)
    if convert is search.search_config_from:
        config.prompt = "a"
    config[field] = value
    with pytest.raises(ValueError, match=INVALID.format(field=field)):
        convert(config)


def test_lm_and_corpus_errors_name_their_section():
    config = tiny.get_config("smoke")
    config.lm.model.n_heads = 3
    with pytest.raises(ValueError, match=INVALID.format(field=r"model\.n_heads")):
        gpt_step.configs_from(config.lm)
    config = tiny.get_config("smoke")
    config.lm.train.warmup_steps = config.lm.train.steps
    with pytest.raises(ValueError, match=INVALID.format(field=r"train\.warmup_steps")):
        gpt_step.configs_from(config.lm)
    config = ml_collections.ConfigDict(
        {"corpus": {}, "tokenizer": {"vocab_size": 600}, "lm": {"model": {"vocab_size": 512}}})
    with pytest.raises(ValueError, match=INVALID.format(field=r"tokenizer\.vocab_size")):
        prepare.configs_from(config)


def test_a_pipeline_record_with_old_comma_strings_still_matches():
    recorded = {"capture": {"hooks": "a, b"}, "eval": {"threshold_rates": "0.5,0.25"}}
    wanted = {"capture": {"hooks": ["a", "b"]}, "eval": {"threshold_rates": [0.5, 0.25]}}
    assert metrics_io.config_difference(recorded, wanted) is None
    assert metrics_io.config_difference(wanted, recorded) is None  # hooks typed as a string
    wanted["eval"]["threshold_rates"] = [0.5, 0.2]
    assert "threshold_rates" in metrics_io.config_difference(recorded, wanted)
    assert "hooks" in metrics_io.config_difference({"hooks": "a,c"}, {"hooks": ["a", "b"]})


def test_fixed_batches_pad_the_last_batch_with_its_last_row():
    x_N2 = np.arange(10).reshape(5, 2)
    batches = list(batching.fixed_batches(x_N2, 2))
    assert [(first, n) for first, _, n in batches] == [(0, 2), (2, 2), (4, 1)]
    np.testing.assert_array_equal(batches[-1][1], [[8, 9], [8, 9]])
    assert all(batch.shape == (2, 2) for _, batch, _ in batches)
    padded, n = batching.pad_rows(x_N2, 5)
    assert padded is x_N2 and n == 5
    np.testing.assert_array_equal(batching.valid_rows(1, 3), [True, False, False])
