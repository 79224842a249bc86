"""Attribution vs ablation: the gradient, the frozen error term, ablations, the binary."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from monosem_jax.gpt import model as gpt_model
from monosem_jax.intervene import attribute_main, splice
from monosem_jax.intervene import attribution as attr
from monosem_jax.sae import artifact as sae_artifact

PROMPT = "Lily went to the park. She saw a big dog"


@pytest.fixture(scope="module")
def spliced(sae_workdir):
    model = splice.load(sae_workdir, "")  # "": the only run
    tokens_1L, _ = splice.tokenize_prompts(model, [PROMPT])
    return model, jnp.asarray(tokens_1L[0])


def _clean_pass(model, target, tokens_L):
    bound = attr.bind(model, target)
    a0_LF, value = attr.clean(bound.static, bound.arrays, tokens_L)
    return bound, a0_LF, value


def test_unmodified_activations_give_the_clean_target_exactly(spliced):
    model, tokens_L = spliced
    for target in (attr.Target("loss"), attr.Target("logit", 5)):
        bound, a0_LF, value = _clean_pass(model, target, tokens_L)
        logits_1LV, _ = gpt_model.forward(model.model_cfg, model.lm_params, tokens_L[None])
        spliced_value = attr.target_of_acts(bound.static, bound.arrays, tokens_L, a0_LF, a0_LF)
        assert float(spliced_value) == float(value)
        np.testing.assert_allclose(
            value, attr.target_value(target, logits_1LV[0], tokens_L), rtol=1e-6
        )
        assert not np.any(np.asarray(a0_LF)[0])  # position 0 stays in the error term


@pytest.mark.parametrize("target", [attr.Target("loss"), attr.Target("logit_next")])
def test_attribution_matches_central_finite_difference(spliced, target):
    model, tokens_L = spliced
    bound, a0_LF, _ = _clean_pass(model, target, tokens_L)
    _, attr_F = attr.attributions(bound.static, bound.arrays, tokens_L, a0_LF)
    attr_F = np.asarray(attr_F)
    assert not np.any(attr_F[~np.any(np.asarray(a0_LF) > 0, axis=0)])  # silent => zero
    # d/ds T(a with feature i scaled by s) at s = 1 is exactly sum_t a_ti dT/da_ti. The smoke
    # SAE's activations are small (T is near linear in them), so a wide step keeps float32
    # round-off (~ulp(T) / h) far below the attributions (~1e-5 for the loss).
    h = 0.5
    for i in np.argsort(-np.abs(attr_F))[:3]:
        def scaled(s, i=i):
            a_LF = a0_LF.at[:, i].multiply(s)
            return float(attr.target_of_acts(bound.static, bound.arrays, tokens_L, a0_LF, a_LF))

        fd = (scaled(1 + h) - scaled(1 - h)) / (2 * h)
        np.testing.assert_allclose(attr_F[i], fd, rtol=0.03, atol=1e-7)
        assert abs(attr_F[i]) > 1e-5  # the check is not vacuous


def test_ablation_of_one_feature_matches_a_direct_intervention(spliced):
    model, tokens_L = spliced
    target = attr.Target("loss")
    bound, a0_LF, value = _clean_pass(model, target, tokens_L)
    i = int(np.argmax(np.asarray(a0_LF).sum(axis=0)))
    (effect,) = attr.ablations(bound, tokens_L, a0_LF, np.array([i]), chunk=4)

    sae = model.sae
    _, captured = gpt_model.forward(
        model.model_cfg, model.lm_params, tokens_L[None], capture=[sae.hook]
    )
    a_1L = sae_artifact.feature_acts(sae, captured[sae.hook])[..., i].at[:, 0].set(0.0)
    d_D = sae_artifact.feature_directions(sae, jnp.array([i]))[0]
    logits_1LV, _ = gpt_model.forward(
        model.model_cfg, model.lm_params, tokens_L[None],
        intervene={sae.hook: lambda x: x - a_1L[..., None] * d_D[None, None]},
    )
    direct = value - attr.target_value(target, logits_1LV[0], tokens_L)
    assert abs(float(direct)) > 1e-6
    np.testing.assert_allclose(effect, direct, rtol=1e-4, atol=1e-6)


def test_chunked_vmapped_ablations_equal_a_per_feature_loop(spliced):
    model, tokens_L = spliced
    bound, a0_LF, _ = _clean_pass(model, attr.Target("loss_last"), tokens_L)
    ids_K = np.flatnonzero(np.any(np.asarray(a0_LF) > 0, axis=0))[:7].astype(np.int32)
    assert ids_K.size == 7  # 3 chunks of 3, the last padded
    chunked_K = attr.ablations(bound, tokens_L, a0_LF, ids_K, chunk=3)
    loop_K = np.array([
        attr.ablations(bound, tokens_L, a0_LF, np.array([i]), chunk=1)[0] for i in ids_K
    ])
    np.testing.assert_allclose(chunked_K, loop_K, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="chunk"):
        attr.ablations(bound, tokens_L, a0_LF, ids_K, chunk=0)


def test_attribute_and_correlations(spliced):
    model, tokens_L = spliced
    result = attr.attribute(attr.bind(model, attr.Target("loss")), tokens_L, chunk=16)
    assert result.ids_K.size == result.attribution_K.size == result.ablation_K.size > 2
    assert np.isfinite(result.pearson) and np.isfinite(result.spearman)
    p, s = attr.correlations(np.array([1.0, 2.0, 3.0]), np.array([1.0, 4.0, 9.0]))
    assert s == pytest.approx(1.0) and 0.9 < p < 1.0
    assert np.isnan(attr.correlations(np.array([1.0]), np.array([2.0]))[0])


def test_parse_target(spliced):
    model, _ = spliced
    assert attr.parse_target(model, "loss") == attr.Target("loss")
    assert attr.parse_target(model, "loss:last") == attr.Target("loss_last")
    assert attr.parse_target(model, "logit:next") == attr.Target("logit_next")
    assert attr.parse_target(model, "logit:7") == attr.Target("logit", 7)
    the = model.tok.encode(" the").ids[0]
    assert attr.parse_target(model, f"logit:{model.tok.decode([the])}") == attr.Target("logit", the)
    for bad in ("lose", "logit:", "logit:99999999", "logit:zebra crossing xylophone"):
        with pytest.raises(ValueError):
            attr.parse_target(model, bad)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "monosem_jax", "configs", "attribution", "default.py:smoke")


def _cli(run_binary, workdir, *flags):
    return run_binary(attribute_main.run_main, f"--workdir={workdir}", f"--config={CONFIG}",
                      *flags)


def test_cli_writes_json_and_png(sae_workdir, copy_workdir, run_binary):
    workdir = copy_workdir(sae_workdir)
    proc = _cli(run_binary, workdir, "--config.name=t", "--config.target=logit:next")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["json"] == os.path.join(workdir, "attribution", "t.json")
    assert os.path.getsize(summary["png"]) > 0
    written = json.load(open(summary["json"]))
    assert len(written["attribution"]) == len(written["ablation"]) == written["active_features"]
    assert len(summary["top"]) == min(5, written["active_features"])


@pytest.mark.parametrize("flag, message", [
    ("--config.prompt=   ", "tokenizes to nothing"),
    ("--config.target=logit:zebra crossing xylophone", "target token"),
    ("--config.chunk=0", "chunk"),
    ("--config.sae_name=nope", "no SAE run"),
])
def test_cli_bad_inputs_exit_2_with_one_line(sae_workdir, flag, message, run_binary):
    proc = _cli(run_binary, sae_workdir, flag)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert not os.path.exists(os.path.join(sae_workdir, "attribution"))


def test_binary_exits_2_with_one_error_line(sae_workdir):
    """The exit-code plumbing of the real process (the messages are checked in-process above)."""
    proc = subprocess.run(
        [sys.executable, "-m", "monosem_jax.intervene.attribute_main", f"--workdir={sae_workdir}",
         f"--config={CONFIG}", "--config.chunk=0"],
        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [proc.stderr.strip().splitlines()[-1]] and "chunk" in errors[0], proc.stderr
    assert not os.path.exists(os.path.join(sae_workdir, "attribution"))
