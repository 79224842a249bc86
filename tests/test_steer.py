"""Steering: clamps keep the SAE error, doses share keys, bad input is one clear error."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from monosem_jax import config_values
from monosem_jax.gpt import model as gpt_model
from monosem_jax.intervene import splice, steer, steer_main
from monosem_jax.sae import artifact as sae_artifact


@pytest.fixture(scope="module")
def spliced(sae_workdir):
    return splice.load(sae_workdir, "")  # "": the only run


def _tokens(model, text="Once upon a time, a little girl named Lily"):
    tokens_PL, _ = splice.tokenize_prompts(model, [text])
    return jnp.asarray(tokens_PL)


def _clean(model, tokens_BL):
    logits_BLV, cap = gpt_model.forward(model.model_cfg, model.lm_params, tokens_BL,
                                        capture=[model.hook])
    return logits_BLV, cap[model.hook]


def _live_features(model, x_BLD, count=3):
    a_F = np.asarray(sae_artifact.feature_acts(model.sae, x_BLD)).max(axis=(0, 1))
    assert (a_F > 0).sum() >= count, "the smoke SAE should have live features on a prompt"
    return np.argsort(-a_F)[:count].astype(np.int32)


def test_clamp_to_own_activation_reproduces_clean_logits(spliced):
    tokens_BL = _tokens(spliced)
    logits_BLV, x_BLD = _clean(spliced, tokens_BL)
    ids_K = _live_features(spliced, x_BLD)

    # In one program the clamp's delta is exactly zero: the output is bit-identical.
    def own_value(x):
        a_BLK = sae_artifact.feature_acts(spliced.sae, x)[..., ids_K]
        return splice.clamp(spliced.sae, x, ids_K, a_BLK)

    same_BLV, _ = gpt_model.forward(spliced.model_cfg, spliced.lm_params, tokens_BL,
                                    intervene={spliced.hook: own_value})
    np.testing.assert_array_equal(np.asarray(same_BLV), np.asarray(logits_BLV))
    # Values measured in another program: equal up to float32 round-off.
    a_BLK = sae_artifact.feature_acts(spliced.sae, x_BLD)[..., ids_K]
    again_BLV = splice.clamped_logits(spliced, tokens_BL, ids_K, a_BLK)
    np.testing.assert_allclose(np.asarray(again_BLV), np.asarray(logits_BLV), atol=2e-5)
    # Without the error term (x -> SAE(x) with the clamp) the logits do change: the test above
    # would catch a clamp that dropped the error.
    sae = spliced.sae
    recon_BLV, _ = gpt_model.forward(
        spliced.model_cfg, spliced.lm_params, tokens_BL,
        intervene={spliced.hook: lambda x: x - (x - _reconstruct(sae, x))},
    )
    assert np.abs(np.asarray(recon_BLV) - np.asarray(logits_BLV)).max() > 1e-3


def _reconstruct(sae, x_BLD):
    from monosem_jax.sae import artifact as sae_artifact

    return sae_artifact.reconstruct(sae, x_BLD)


def test_clamp_matches_float64_formula(spliced):
    """x + sum_k (v_k - a_k) W_dec,k / (||W_dec,k|| c), in float64 NumPy."""
    _, x_BLD = _clean(spliced, _tokens(spliced))
    ids_K = _live_features(spliced, x_BLD, 2)
    values_K = np.array([3.0, -1.5], np.float32)
    got = np.asarray(splice.clamp(spliced.sae, x_BLD, jnp.asarray(ids_K), jnp.asarray(values_K)))
    x = np.asarray(x_BLD, np.float64)
    a = np.asarray(sae_artifact.feature_acts(spliced.sae, x_BLD), np.float64)[..., ids_K]
    w = np.asarray(spliced.sae.params["w_dec_FD"], np.float64)[ids_K]
    d = w / (np.linalg.norm(w, axis=1, keepdims=True) * spliced.sae.norm_scale)
    want = x + np.einsum("blk,kd->bld", values_K[None, None] - a, d)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # After the clamp the SAE reads the clamped value back (ReLU variant, positive value): the
    # clamp moves x along the feature's own direction.
    assert np.all(np.isfinite(got))


def test_steer_baseline_and_doses(spliced):
    tokens_BL = _tokens(spliced)
    _, x_BLD = _clean(spliced, tokens_BL)
    ids_K = _live_features(spliced, x_BLD, 1)
    prompts = ["Once upon a time", "One day, a"]
    own = steer.steer(spliced, prompts, ids_K, np.array([[0.0], [50.0]]), num_samples=3,
                      num_new=6, seed=3)
    assert len(own["baseline"]) == 2 and all(len(s) == 3 for s in own["baseline"])
    assert len(own["steered"]) == 2 and len(own["steered"][0]) == 2
    # Same keys for every member: a second call reproduces everything, and a huge clamp changes
    # some text while the baseline stays the same across calls.
    again = steer.steer(spliced, prompts, ids_K, np.array([[50.0]]), num_samples=3, num_new=6,
                        seed=3)
    assert again["baseline"] == own["baseline"]
    assert again["steered"][0] == own["steered"][1]
    assert own["steered"][1] != own["baseline"]


def test_bad_input_is_a_clear_error(spliced):
    with pytest.raises(ValueError, match="out of range"):
        splice.check_feature_ids(spliced, [spliced.num_features])
    with pytest.raises(ValueError, match="repeat"):
        splice.check_feature_ids(spliced, [1, 1])
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        splice.tokenize_prompts(spliced, ["Once", "   "])
    with pytest.raises(ValueError, match="exceeds the context"):
        splice.tokenize_prompts(spliced, ["Once upon a time"], room=10_000)
    with pytest.raises(ValueError, match="finite"):
        steer.SteerConfig("", ("Once",), (1,), (1.0, float("nan")))
    with pytest.raises(ValueError, match="numbers"):
        config_values.float_tuple("clamp_values", "1,big")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "monosem_jax", "configs", "steer", "default.py:smoke")


def test_cli_writes_summary_and_rejects_bad_flags(spliced, sae_workdir, copy_workdir, run_binary):
    def _cli(workdir, *flags):
        return run_binary(steer_main.run_main, f"--workdir={workdir}", f"--config={CONFIG}",
                          *flags)

    workdir = copy_workdir(sae_workdir)
    max_F = steer.max_activations(spliced, workdir, np.arange(spliced.num_features), 2048)
    live = int(np.argmax(max_F))
    out = _cli(workdir, f"--config.features={live}", "--config.clamp_values=-1,4",
               "--config.name=s")
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    with open(os.path.join(workdir, "steer", "s.json")) as f:
        assert json.load(f) == summary
    assert summary["features"] == [live] and len(summary["steered"]) == 2
    np.testing.assert_allclose(summary["clamp_values"], [[-max_F[live]], [4 * max_F[live]]],
                               rtol=1e-6)
    assert os.path.exists(os.path.join(workdir, "steer", "s.md"))
    for flags, message in [
        (["--config.features=99999"], "out of range"),
        (["--config.features="], "config.features=() is invalid"),
        (["--config.features=3", "--config.prompts=  "], "tokenizes to nothing"),
        (["--config.features=3", "--config.clamp_values=inf"], "finite"),
        (["--config.features=3", "--config.sae_name=nope"], "no SAE run"),
        ([f"--config.features={int(np.argmin(max_F))}"] if max_F.min() <= 0 else
         ["--config.features=3", "--config.scale=median"], "never fire" if max_F.min() <= 0
         else "config.scale='median' is invalid"),
    ]:
        bad = _cli(workdir, *flags)
        assert bad.returncode == 2, (flags, bad.stderr[-1500:])
        last = bad.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, (flags, last)
    with open(os.path.join(workdir, "steer", "s.json")) as f:  # nothing written was lost
        assert json.load(f) == summary


def test_binary_exits_2_with_one_error_line(sae_workdir):
    """The exit-code plumbing of the real process (the messages are checked in-process above)."""
    out = subprocess.run(
        [sys.executable, "-m", "monosem_jax.intervene.steer_main", f"--workdir={sae_workdir}",
         f"--config={CONFIG}", "--config.features=3", "--config.clamp_values=inf"],
        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 2, out.stderr[-1500:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [out.stderr.strip().splitlines()[-1]] and "finite" in errors[0], out.stderr
    assert not os.path.exists(os.path.join(sae_workdir, "steer"))


def test_max_activations_match_feature_acts(spliced, sae_workdir):
    from monosem_jax.analysis import features

    windows_WL = features.windows(sae_workdir, "eval", spliced.model_cfg.context_len, 2048)
    ids_K = np.array([0, 5, 9], np.int32)
    got = steer.max_activations(spliced, sae_workdir, ids_K, max_tokens=2048, batch_size=5)
    _, x_BLD = _clean(spliced, jnp.asarray(windows_WL))
    want = np.asarray(sae_artifact.feature_acts(spliced.sae, x_BLD))[:, 1:, ids_K].max(axis=(0, 1))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert jax.tree.leaves(got)  # a plain array


def test_continuation_nll_is_the_unsteered_loss_of_the_generated_tokens(spliced):
    tokens_BL = _tokens(spliced)
    _, x_BLD = _clean(spliced, tokens_BL)
    ids_K = _live_features(spliced, x_BLD, 1)
    prompts = ["Once upon a time", "One day, a little"]
    num_new = 5
    out = steer.steer(spliced, prompts, ids_K, np.array([[50.0]]), num_samples=2,
                      num_new=num_new, seed=1)
    buffers, lengths = out["tokens"], out["prompt_lengths"]
    assert buffers.shape[:3] == (2, 2, 2)  # baseline + one dose, prompts, samples
    buffers = buffers.copy()
    buffers[1, 0, 0, lengths[0] + 1] = spliced.eot  # an early end of text: later slots drop
    got_V = steer.continuation_nll(spliced, buffers, lengths, num_new)
    # Direct: log-softmax of the plain LM at each generated slot, up to the first EOT.
    for v in range(2):
        total, count = 0.0, 0
        for p in range(2):
            for s in range(2):
                row = buffers[v, p, s]
                logits, _ = gpt_model.forward(spliced.model_cfg, spliced.lm_params,
                                              jnp.asarray(row[None, :-1]))
                logp = np.asarray(jax.nn.log_softmax(logits[0].astype(jnp.float64)
                                                     if jax.config.x64_enabled else logits[0]))
                for t in range(lengths[p], lengths[p] + num_new):
                    total -= float(logp[t - 1, row[t]])
                    count += 1
                    if row[t] == spliced.eot:
                        break
        np.testing.assert_allclose(got_V[v], total / count, rtol=1e-5)
