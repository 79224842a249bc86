"""SAE training with source "lm" (sae/lm_feed.py): the LM forward and the SAE step in one program,
through an on-device shuffle buffer; held-out EV against a store-trained SAE, resume, the order."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from monosem_jax import parallel
from monosem_jax.activations import capture
from monosem_jax.activations import store as store_lib
from monosem_jax.configs.capture import default as capture_default
from monosem_jax.configs.sae import default as sae_default
from monosem_jax.sae import artifact as sae_artifact
from monosem_jax.sae import lm_feed
from monosem_jax.sae import metrics as sae_metrics
from monosem_jax.sae import run as sae_run
from monosem_jax.sae import sweep as sae_sweep
from monosem_jax.sae import train as sae_train

HOOK = "blocks.0.hook_resid_post"


def _config(**overrides):
    config = sae_default.get_config("smoke")
    config.source = "lm"
    config.update(overrides)
    return config


def _feed(workdir, mesh=None, **overrides):
    cfg = sae_run.TrainConfig.from_config(_config(**overrides))
    data_seed = cfg.data_seed if cfg.data_seed >= 0 else cfg.seed
    return lm_feed.LMFeed(cfg, workdir, data_seed, mesh or parallel.make_mesh())


def test_lm_source_matches_a_store_trained_sae_at_equal_tokens(smoke_lm_workdir, copy_workdir):
    # 300 steps x 256 rows (about one pass over the smoke train split): at the smoke default's
    # 40 steps two store runs with different data seeds already differ by ~0.02 in EV.
    workdir = copy_workdir(smoke_lm_workdir)
    capture.capture(capture_default.get_config("smoke"), workdir)
    steps = dict(steps=300, checkpoint_every=100, log_every=100)
    store = sae_train.train_sae(_config(name="store", source="store", **steps), workdir)
    lm = sae_train.train_sae(_config(name="lm", **steps), workdir)
    assert lm["tokens"] == store["tokens"] == 300 * 256
    # The annealed k's two programs, as the store path: no step retraces.
    assert lm["step_compilations"] == store["step_compilations"] == 2
    # Both SAEs on the same held-out rows (the eval split's, never trained on by either), each
    # in its own input units.
    feed = _feed(workdir)
    hook_rows_ND = feed.eval_rows() / np.float32(feed.norm_scale)
    ev = {}
    for name in ("store", "lm"):
        sae = sae_artifact.load_run(os.path.join(workdir, "sae", name))
        metrics, _ = sae_metrics.evaluate(sae.sae_cfg, sae.params, sae.hparams,
                                          hook_rows_ND * np.float32(sae.norm_scale))
        ev[name] = metrics["explained_variance"]
    assert ev["store"] > 0.85, ev
    assert abs(ev["lm"] - ev["store"]) <= 0.01, ev
    assert ev["lm"] == pytest.approx(lm["explained_variance"], abs=1e-6)  # its own held-out rows
    # The two scales estimate the same E||x|| (the store's over every train row).
    st = store_lib.open_store(store_lib.kvstore_for(os.path.join(workdir, "acts")), HOOK)
    assert feed.norm_scale == pytest.approx(st.norm_scale, rel=0.03)
    recorded = json.load(open(os.path.join(workdir, "sae", "lm", "config.json")))
    assert recorded["norm_scale"] == feed.norm_scale and recorded["sae"]["source"] == "lm"


def test_draw_serves_each_fresh_row_once_in_the_planned_order(smoke_lm_workdir):
    # The jitted draw, step by step on the 8-device mesh, against the same buffer kept on the
    # host: step s returns buffer[slots(s)] and writes fill F + s's rows there.
    mesh = parallel.make_mesh()
    feed = _feed(smoke_lm_workdir, mesh, lm_buffer_batches=2)
    scale = np.float32(feed.norm_scale)
    host_ND = feed.initial_fill() * scale
    draw = jax.jit(feed.draw, donate_argnums=0)
    with jax.set_mesh(mesh):
        carry, inputs = feed.initial_carry(0), feed.inputs(0)
        for step in range(5):
            carry, x_BD = draw(carry, next(inputs))
            slots_B = feed.step_slots(step)
            np.testing.assert_allclose(np.asarray(x_BD), host_ND[slots_B], rtol=1e-5, atol=1e-5)
            host_ND[slots_B] = feed.fill_rows(feed.fills + step) * scale
        inputs.close()
    np.testing.assert_allclose(np.asarray(carry["buffer_ND"]), host_ND, rtol=1e-5, atol=1e-5)
    assert x_BD.sharding.spec == jax.sharding.PartitionSpec("data")
    feed.close()


def test_order_is_a_pure_function_of_seed_and_step(smoke_lm_workdir):
    mesh8, mesh1 = parallel.make_mesh(), parallel.make_mesh(devices=jax.devices()[:1])
    a, b = _feed(smoke_lm_workdir, mesh8), _feed(smoke_lm_workdir, mesh1)
    other = _feed(smoke_lm_workdir, data_seed=1)
    per = a.contexts_per_fill
    assert per == -(-256 // 31) and a.padded_contexts == 16 and b.padded_contexts == per
    for fill in (0, 7, 123):
        fa, fb = a.fill_inputs(fill), b.fill_inputs(fill)
        # The mesh only pads the contexts (with rows never kept); the order is the same.
        np.testing.assert_array_equal(fa["tokens_WL"][:per], fb["tokens_WL"])
        np.testing.assert_array_equal(fa["keep_B"], fb["keep_B"])
        assert len(set(fa["keep_B"])) == 256 and fa["keep_B"].max() < per * 31
        assert not np.array_equal(a.fill_windows(fill), other.fill_windows(fill))
    np.testing.assert_array_equal(a.step_slots(9), b.step_slots(9))
    assert len(set(a.step_slots(9))) == 256 and a.step_slots(9).max() < a.buffer_rows
    # Each epoch of the stream visits every train window once.
    count = a.train.count
    fills = -(-2 * count // per)
    stream = np.concatenate([a.fill_windows(i) for i in range(fills)])
    assert sorted(stream[:count]) == list(range(count))
    assert sorted(stream[count:2 * count]) == list(range(count))
    # Position 0 (the attention sink) is never a row; the held-out rows are the eval split's.
    assert (a.fill_inputs(3)["positions_WK"] > 0).all() and a.train.rows_per_context == 31
    eval_ND = a.eval_rows()
    tokens_WL, positions_WK = a.eval.batch(np.arange(2), 2)
    want_ND = capture.hook_activations(a.host_params, tokens_WL, positions_WK,
                                       model_cfg=a.model_cfg, hooks=(HOOK,))[HOOK]
    np.testing.assert_allclose(eval_ND[:62], np.asarray(want_ND) * np.float32(a.norm_scale),
                               rtol=1e-5, atol=1e-5)
    assert eval_ND.shape == (1024, 32) and a.norm_scale == b.norm_scale
    for feed in (a, b, other):
        feed.close()


def test_a_sweep_on_the_lm_compiles_its_step_once(smoke_lm_workdir, copy_workdir):
    workdir = copy_workdir(smoke_lm_workdir)
    config = _config(steps=20, k_start=0, model_parallel=2)
    config.sweep.grid = ("k=4,8",)
    config.sweep.strategy = "map"
    summary = sae_sweep.sweep(config, workdir)
    assert summary["members"] == 2 and summary["step_compilations"] == 1
    member = json.load(open(os.path.join(workdir, "sae", "sweep_0", "summary.json")))
    assert member["l0"] <= 4 and np.isfinite(member["mse"])
    assert sae_artifact.load_sae(workdir, "sweep_1").step == 20


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(lm_buffer_batches=0), "lm_buffer_batches"),
        (dict(lm_positions_per_context=-1), "lm_positions_per_context"),
        (dict(eval_rows=10**6), "eval_rows"),
        (dict(hook="blocks.9.hook_resid_post"), "unknown hook"),
    ],
)
def test_bad_lm_settings_are_clear_errors(smoke_lm_workdir, copy_workdir, override, message):
    workdir = copy_workdir(smoke_lm_workdir)
    with pytest.raises(ValueError, match=message):
        sae_train.train_sae(_config(**override), workdir)
    assert not os.path.exists(os.path.join(workdir, "sae"))  # nothing written


def _cmd(workdir, *extra):
    return [sys.executable, "-m", "monosem_jax.sae.main", f"--workdir={workdir}",
            f"--config={os.path.dirname(sae_default.__file__)}/default.py:smoke",
            "--config.source=lm", "--config.steps=600", "--config.checkpoint_every=20",
            "--config.log_every=100", *extra]


def test_kill_and_resume_matches_uninterrupted(smoke_lm_workdir, copy_workdir, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    ref_dir = copy_workdir(smoke_lm_workdir)
    ref = subprocess.run(_cmd(ref_dir), capture_output=True, text=True, env=env)
    assert ref.returncode == 0, ref.stderr[-2000:]
    ref_summary = json.loads(ref.stdout.strip().splitlines()[-1])

    workdir = str(tmp_path / "killed")
    subprocess.run(["cp", "-r", smoke_lm_workdir, workdir], check=True)
    proc = subprocess.Popen(_cmd(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    ckpts = os.path.join(workdir, "sae", "topk", "checkpoints")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(ckpts) and any(p.isdigit() and int(p) >= 100 for p in os.listdir(ckpts)):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = subprocess.run(_cmd(workdir), capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming SAE topk from checkpoint at step" in out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0 < summary["resumed_from_step"] < 600
    for key in ("mse", "explained_variance", "l0", "dead_fraction", "train_loss"):
        assert summary[key] == ref_summary[key], key
    resumed = sae_artifact.load_run(os.path.join(workdir, "sae", "topk"))
    uninterrupted = sae_artifact.load_run(os.path.join(ref_dir, "sae", "topk"))
    for name, value in uninterrupted.params.items():
        np.testing.assert_array_equal(np.asarray(resumed.params[name]), np.asarray(value), name)
    assert resumed.norm_scale == uninterrupted.norm_scale
