"""configs/pipeline/tinystories_gpu.py, the seed-scale GPU run, proven without a GPU.

Full size: every stage's config boundary accepts it, the LM, capture and SAE shapes through
jax.eval_shape (nothing allocated), its docstring's FLOPs are XLA's count, and without the real
corpus it stops at once. Smoke: the same wiring through the whole pipeline on the CPU.
"""

import functools
import importlib.util
import json
import os
import re

import jax
import jax.numpy as jnp
import pytest

from monosem_jax import pipeline
from monosem_jax.activations import capture
from monosem_jax.analysis import evaluate
from monosem_jax.browser import write as browser_write
from monosem_jax.configs.pipeline import tinystories_gpu
from monosem_jax.corpus import prepare
from monosem_jax.gpt import model as gpt_model
from monosem_jax.gpt import step as gpt_step
from monosem_jax.sae import run as sae_run
from monosem_jax.sae import step as sae_step

CONFIG = tinystories_gpu.__file__
HOOK = "blocks.3.hook_resid_post"  # the residual stream after 4 of the 8 blocks
LM_PARAMS = 20_496_128  # configs/gpt/tinystories.py's "20.5M parameters"
D, F = 384, 16384  # the LM's residual width, the SAE's latents

_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "experiments", "seed_scale_flops.py")


def _flops_script():
    spec = importlib.util.spec_from_file_location("seed_scale_flops", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _leaf_paths(config) -> set[str]:
    def walk(d, prefix):
        for k, v in d.items():
            yield from walk(v, f"{prefix}{k}.") if isinstance(v, dict) else (prefix + k,)

    return set(walk(config.to_dict(), ""))


@pytest.fixture(scope="module")
def config():
    return tinystories_gpu.get_config()


def _sae_spec(config):
    return sae_run.run_spec(sae_run.TrainConfig.from_config(config.sae), "/unused", d=D)


def test_every_stage_accepts_the_full_config(config):
    corpus, tok = prepare.configs_from(config)
    assert (corpus.path, corpus.format) == ("TinyStoriesV2-GPT4-train.txt", "tinystories")
    model_cfg, train_cfg = gpt_step.configs_from(config.lm)
    assert tok.vocab_size == model_cfg.vocab_size == 8192
    assert (model_cfg.d_model, model_cfg.n_layers, model_cfg.context_len) == (D, 8, 512)
    assert train_cfg.steps * train_cfg.batch_size * model_cfg.context_len == 2_621_440_000

    cap = capture.capture_config_from(config.capture)
    gpt_model.check_hooks(model_cfg, cap.hooks)
    assert cap.hooks == (HOOK,) and gpt_model.hook_dim(model_cfg, HOOK) == D
    assert (cap.dtype, cap.max_rows, cap.positions_per_context) == ("bfloat16", 2**26, 128)

    sae_cfg = sae_run.TrainConfig.from_config(config.sae)
    assert (sae_cfg.hook, sae_cfg.variant, sae_cfg.d_sae) == (HOOK, "topk", F)
    assert sae_cfg.hparams["k"] == 20  # active latents per token once k has annealed from 64
    assert sae_cfg.steps * sae_cfg.batch_size == 4 * cap.max_rows  # four passes over the store
    spec = _sae_spec(config)  # resolves and validates the hyper-parameters
    assert (spec.sae_cfg.d, spec.sae_cfg.k) == (D, 64)

    evaluate.eval_config_from(config.eval)
    browser_write.browse_config_from(config.browse)
    assert config.compare_variants == ()
    # The smoke variant sets the same fields, only smaller: it proves this config's wiring.
    smoke = tinystories_gpu.get_config("smoke")
    assert _leaf_paths(smoke) == _leaf_paths(config)
    assert smoke.sae.hook == smoke.capture.hooks[0] == tinystories_gpu.residual_hook(2)


def test_full_size_shapes_by_eval_shape(config):
    model_cfg, train_cfg = gpt_step.configs_from(config.lm)
    lm_state = jax.eval_shape(lambda: gpt_step.init_state(model_cfg, train_cfg))
    params = lm_state["params"]
    assert gpt_model.num_params(params) == LM_PARAMS
    assert params["unembed"]["kernel"].shape == (D, 8192)  # untied
    moments = [x for x in jax.tree.leaves(lm_state["opt_state"]) if x.ndim]
    assert sum(x.size for x in moments) == 2 * LM_PARAMS  # AdamW's two moments

    tokens_BL1 = jax.ShapeDtypeStruct((train_cfg.batch_size, model_cfg.context_len + 1), jnp.int32)
    step = functools.partial(gpt_step.train_step, model_cfg=model_cfg, train_cfg=train_cfg)
    new_state, metrics = jax.eval_shape(step, lm_state, tokens_BL1)
    assert jax.tree.structure(new_state) == jax.tree.structure(lm_state)
    assert metrics["loss"].shape == ()

    cap = capture.capture_config_from(config.capture)
    batch, kept = cap.batch_size, cap.positions_per_context
    forward = functools.partial(capture.hook_activations, model_cfg=model_cfg, hooks=cap.hooks)
    acts = jax.eval_shape(forward, params,
                          jax.ShapeDtypeStruct((batch, model_cfg.context_len), jnp.int32),
                          jax.ShapeDtypeStruct((batch, kept), jnp.int32))
    assert acts[HOOK].shape == (batch * kept, D)

    spec = _sae_spec(config)
    sae_state = jax.eval_shape(lambda: sae_step.init_state(spec.sae_cfg, jax.random.key(0)))
    shapes = {k: v.shape for k, v in sae_state["params"].items()}
    assert shapes == {"w_enc_DF": (D, F), "b_enc_F": (F,), "w_dec_FD": (F, D), "b_dec_D": (D,)}
    assert sae_state["steps_since_fired_F"].shape == (F,)
    x_BD = jax.ShapeDtypeStruct((config.sae.batch_size, D), jnp.float32)
    sae_train = functools.partial(sae_step.train_step, cfg=spec.sae_cfg)
    new_sae, sae_metrics = jax.eval_shape(sae_train, sae_state, x_BD, spec.device_hparams())
    assert jax.tree.structure(new_sae) == jax.tree.structure(sae_state)
    assert sae_metrics["l0"].shape == ()


def _docstring_flops(stage: str) -> float:
    """A stage's FLOPs per step from the config's docstring table."""
    match = re.search(rf"^  {stage} .*?\s(\d\.\d\de\d+)\s", tinystories_gpu.__doc__, re.M)
    assert match, f"no '{stage}' row in the docstring's table"
    return float(match.group(1))


def test_docstring_flops_are_xla_count(config):
    """The table is what experiments/seed_scale_flops.py measures: when this fails, rerun it and
    update the docstring."""
    flops = _flops_script()
    lm = flops.lm_costs(config)
    assert lm["params"] == LM_PARAMS
    assert lm["train_step"]["flops"] == pytest.approx(_docstring_flops("lm"), rel=0.01)
    # ~6 FLOPs per parameter per token (attention's extra cancels the embedding's gather).
    per_token = lm["train_step"]["flops"] / lm["tokens_per_step"]
    assert per_token == pytest.approx(6 * LM_PARAMS, rel=0.05)
    for phase in flops.sae_costs(config, D)["phases"]:  # k 64, then k 20
        assert phase["step"]["flops"] == pytest.approx(_docstring_flops("sae"), rel=0.02)


def test_without_the_real_corpus_it_stops_at_once(tmp_path, monkeypatch, run_binary):
    monkeypatch.chdir(tmp_path)  # the default corpus path is relative: not found here
    out = run_binary(pipeline.run_main, f"--workdir={tmp_path / 'w'}", f"--config={CONFIG}")
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "TinyStoriesV2-GPT4-train.txt" in last, last
    assert re.search("no such file", last, re.IGNORECASE), last
    assert not (tmp_path / "w" / "lm").exists()
    assert not (tmp_path / "w" / "pipeline" / "corpus.json").exists()  # record taken back


def test_smoke_runs_the_whole_pipeline(tmp_path, run_binary):
    out = run_binary(pipeline.run_main, f"--workdir={tmp_path / 'w'}", f"--config={CONFIG}:smoke")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    smoke = tinystories_gpu.get_config("smoke")
    hook = tinystories_gpu.residual_hook(smoke.lm.model.n_layers)
    assert summary["lm"]["params"] == 133_120  # configs/gpt/tinystories.py:smoke
    assert summary["acts"]["hooks"] == [hook]
    assert summary["acts"]["rows"] > 0 and summary["acts"]["rows"] % 16 == 0  # 16 per context
    store = json.loads((tmp_path / "w" / "acts" / hook / "summary.json").read_text())
    assert store["dtype"] == "bfloat16"
    sae = summary["sae"]
    assert (sae["variant"], sae["d"], sae["d_sae"], sae["steps"], sae["l0"]) == (
        "topk", 64, 256, 40, 8.0)
    assert summary["eval"]["hook"] == hook and 0 <= summary["eval"]["ce_loss_recovered"] <= 1.5
    assert summary["browser"]["features_written"] == 256
    assert summary["compare"] == {}
    assert (tmp_path / "w" / "report.md").exists()
