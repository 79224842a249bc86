"""Feature search: activations against a direct recomputation, contrastive ranking against a
NumPy brute force, and the monosem-search binary's outputs and one-line errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from monosem_jax.configs.search import default as search_default
from monosem_jax.gpt import model as gpt_model
from monosem_jax.intervene import search, search_main, splice
from monosem_jax.sae import artifact as sae_artifact

ENV = dict(os.environ, JAX_PLATFORMS="cpu")
PROMPTS = ["The fish swam in the big sea.", "Lily said, \"I am happy!\"", "Tom",
           ("Once there was a cat.", " Tom saw a fish.")]  # (context, text): text scored


@pytest.fixture(scope="module")
def model(sae_workdir):
    return splice.load(sae_workdir, "")  # "": the only run


def _direct_acts(model, prompt: str) -> np.ndarray:
    """[T, F] reported activations of one unpadded prompt, its leading EOT dropped."""
    key = (id(model), prompt)
    if key not in _DIRECT:
        _DIRECT[key] = _direct_uncached(model, prompt)
    return _DIRECT[key]


_DIRECT: dict = {}  # the tests reuse prompts: compute each once


def _direct_uncached(model, prompt) -> np.ndarray:
    context, text = ("", prompt) if isinstance(prompt, str) else prompt
    # The BPE splits before a space, so here the text's tokens follow the context's unchanged.
    skip = len(model.tok.encode(context).ids) if context else 0
    tokens_1L = np.array([[model.eot, *model.tok.encode(context + text).ids]], np.int32)

    @jax.jit
    def acts(lm_params, tokens_1L):
        _, captured = gpt_model.forward(model.model_cfg, lm_params, tokens_1L,
                                        capture=[model.hook])
        return sae_artifact.feature_acts(model.sae, captured[model.hook])

    return np.asarray(acts(model.lm_params, tokens_1L))[0, 1 + skip :]


def test_prompt_features_match_direct_recomputation(model):
    top_n = 6
    found = search.prompt_features(model, PROMPTS, top_n)
    for result, prompt in zip(found, PROMPTS, strict=True):
        a_NF = _direct_acts(model, prompt)
        assert len(result.tokens) == a_NF.shape[0]
        assert "".join(result.tokens) == (prompt if isinstance(prompt, str) else prompt[1])
        np.testing.assert_allclose(result.token_acts_NK, -np.sort(-a_NF, 1)[:, :top_n],
                                   rtol=1e-4, atol=1e-5)
        fired_NK = result.token_acts_NK > 1e-4  # below that, ids of near-ties may swap
        picked_NK = np.take_along_axis(a_NF, result.token_ids_NK, 1)
        np.testing.assert_allclose(picked_NK[fired_NK], result.token_acts_NK[fired_NK],
                                   rtol=1e-4, atol=1e-5)
        max_F, mean_F = a_NF.max(0), a_NF.mean(0)
        n = len(result.top_ids_K)
        assert n > 0 and np.all(result.top_max_K > 0)
        np.testing.assert_allclose(result.top_max_K, -np.sort(-max_F)[:n], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(max_F[result.top_ids_K], result.top_max_K, rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(mean_F[result.top_ids_K], result.top_mean_K, rtol=1e-4,
                                   atol=1e-5)


def _numpy_scores(max_PF, pos_P, neg_P):
    pos_F, neg_F = max_PF[pos_P].mean(0), max_PF[neg_P].mean(0)
    fires_PF = max_PF > 0
    return pos_F, neg_F, {
        "max_diff": pos_F - neg_F,
        "norm_max_diff": (pos_F - neg_F) / np.maximum(max_PF.max(0), 1e-6),
        "fire_diff": fires_PF[pos_P].mean(0) - fires_PF[neg_P].mean(0),
        "f1": np.max([_f1_at(max_PF > t, pos_P) for t in [*np.unique(max_PF), np.inf]], 0),
    }


def _f1_at(fires_PF, pos_P):
    tp = (fires_PF & pos_P[:, None]).sum(0)
    return 2 * tp / np.maximum(fires_PF.sum(0) + pos_P.sum(), 1)


@pytest.mark.parametrize("score", sorted(search.SCORES))
def test_contrastive_matches_numpy_brute_force(model, score):
    with_, without = PROMPTS[:2], ["The cow slept in the barn.", PROMPTS[3], "We ate soup."]
    # batch_size 2: five prompts run as three chunks, the last padded with an empty row.
    found = search.contrastive(model, with_, without, model.num_features, score, batch_size=2)
    max_PF = np.stack([_direct_acts(model, p).max(0) for p in [*with_, *without]])
    is_pos_P = np.arange(5) < 2
    pos_F, neg_F, scores = _numpy_scores(max_PF, is_pos_P, ~is_pos_P)
    score_F = scores[score]
    assert sorted(found.feature_N.tolist()) == list(range(model.num_features))
    np.testing.assert_allclose(found.score_N, -np.sort(-score_F), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(score_F[found.feature_N], found.score_N, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pos_F[found.feature_N], found.pos_N, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(neg_F[found.feature_N], found.neg_N, rtol=1e-4, atol=1e-5)


def test_rank_features_known_answer():
    # Feature 0 fires strongly everywhere, 1 only on "without" prompts, 2 on every "with"
    # prompt, 3 on one "with" prompt, 4 weakly on every "with" prompt. The last row is padding:
    # zeros (as padded prompts are) and in neither set. Ties go to the larger max_diff.
    max_PF = jnp.array([[5.0, 0, 2, 0.1, 0.01], [5, 0, 2, 0, 0.01], [5, 3, 0, 0, 0],
                        [5, 3, 0, 0, 0], [0, 0, 0, 0, 0]])
    pos_P, neg_P = jnp.array([1.0, 1, 0, 0, 0]), jnp.array([0.0, 0, 1, 1, 0])
    # Only max_diff keeps the weak feature 4 below the strong one-prompt feature 3; f1 ties the
    # everywhere feature 0 (recall 1, precision 1/2) with feature 3 (recall 1/2, precision 1).
    orders = {"max_diff": [2, 3, 4, 0, 1], "norm_max_diff": [2, 4, 3, 0, 1],
              "fire_diff": [2, 4, 3, 0, 1], "f1": [2, 4, 3, 0, 1]}
    for score, order in orders.items():
        st = search.SearchStatic(None, top_n=5, score=score)
        ids, _, pos, neg = search.rank_features(max_PF, pos_P, neg_P, st)
        assert ids.tolist() == order, score
        np.testing.assert_allclose(pos, np.array([5, 0, 2, 0.05, 0.01])[order], rtol=1e-6)
        np.testing.assert_allclose(neg, np.array([5, 3, 0, 0, 0])[order], rtol=1e-6)
    assert search.split_prompts(" a || b|c ||  ||") == [" a ", " b|c "]


def _args(workdir, *flags):
    config = os.path.join(os.path.dirname(search_default.__file__), "default.py:smoke")
    return [f"--workdir={workdir}", f"--config={config}", *flags]


def _cli(run_binary, workdir, *flags):
    return run_binary(search_main.run_main, *_args(workdir, *flags))


def test_cli_writes_json(sae_workdir, copy_workdir, run_binary):
    workdir = copy_workdir(sae_workdir)
    out = _cli(run_binary, workdir, "--config.prompt=The fish swam.", "--config.name=one",
               "--config.context=Once there was a cat.")
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    written = json.load(open(os.path.join(workdir, "search", "one.json")))
    assert printed == written and written["mode"] == "prompt"
    assert written["context"] == "Once there was a cat."
    assert "".join(t["token"] for t in written["tokens"]) == "The fish swam."
    assert 0 < len(written["top"]) <= 5
    out = _cli(run_binary, workdir, "--config.with_prompts=The sea.||A fish.",
               "--config.without_prompts=A cow.")
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    assert printed["mode"] == "contrastive" and len(printed["ranking"]) == 5
    assert printed["with_prompts"] == ["The sea.", "A fish."]
    assert json.load(open(printed["path"])) == printed


@pytest.mark.parametrize("flags, message", [
    (["--config.prompt=   "], "nothing to search"),
    ([], "nothing to search"),
    (["--config.prompt=a", "--config.with_prompts=b", "--config.without_prompts=c"], "not both"),
    (["--config.with_prompts=b"], "needs both"),
    (["--config.prompt=a", "--config.top_n=0"], "top_n"),
    (["--config.prompt=a", "--config.sae_name=missing"], "no SAE run 'missing'"),
])
def test_cli_bad_inputs_are_one_clear_line(sae_workdir, flags, message, run_binary):
    out = _cli(run_binary, sae_workdir, *flags)
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr
    assert not os.path.exists(os.path.join(sae_workdir, "search"))


def test_binary_exits_2_with_one_error_line(sae_workdir):
    """The exit-code plumbing of the real process (the messages are checked in-process above)."""
    out = subprocess.run(
        [sys.executable, "-m", "monosem_jax.intervene.search_main",
         *_args(sae_workdir, "--config.prompt=a", "--config.top_n=0")],
        capture_output=True, text=True, env=ENV,
    )
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [out.stderr.strip().splitlines()[-1]] and "top_n" in errors[0], out.stderr
    assert not os.path.exists(os.path.join(sae_workdir, "search"))
