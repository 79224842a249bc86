"""Capture: stored rows equal recomputed activations, resume after SIGKILL, kvstores, errors."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from monosem_jax.activations import capture, store
from monosem_jax.configs.capture import default as capture_default
from monosem_jax.corpus import dataset
from monosem_jax.gpt import artifact as gpt_artifact
from monosem_jax.gpt import model as gpt_model

HOOKS = "blocks.0.hook_resid_post,blocks.1.hook_mlp_post"


def _config(**overrides):
    config = capture_default.get_config("smoke")
    config.hooks = HOOKS
    config.update(overrides)
    return config


def _recompute(workdir, hook, doc_R, position_R):
    """Activations recomputed from (document, position) alone, via the context windows."""
    model_cfg, params, _ = gpt_artifact.load_trained(workdir)
    split = dataset.load_split(os.path.join(workdir, "data"), "train")
    length = model_cfg.context_len
    index_R = split.doc_starts_D[doc_R] - 1 + position_R
    window_R, offset_R = index_R // length, index_R % length
    tokens_RL = np.asarray(split.tokens_N[window_R[:, None] * length + np.arange(length)], np.int32)
    _, acts = jax.jit(lambda t: gpt_model.forward(model_cfg, params, t, capture=[hook]))(tokens_RL)
    return np.asarray(acts[hook])[np.arange(len(index_R)), offset_R], np.asarray(
        split.tokens_N[index_R]
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rows_equal_recomputed_activations(smoke_lm_workdir, copy_workdir, dtype):
    workdir = copy_workdir(smoke_lm_workdir)
    summary = capture.capture(_config(dtype=dtype, max_rows=5000), workdir)
    assert summary["rows"] == 5000
    for hook in HOOKS.split(","):
        st = store.open_store(store.kvstore_for(os.path.join(workdir, "acts")), hook)
        assert st.rows == 5000 and st.dtype == dtype
        assert st.attributes["lm_checkpoint_step"] == 24
        rows = np.random.default_rng(0).choice(st.rows, 64, replace=False)
        meta = st.read_meta(0, st.rows)
        got = np.stack([st.read_rows(r, r + 1)[0] for r in rows])
        want, token_R = _recompute(workdir, hook, meta["doc_id"][rows], meta["position"][rows])
        np.testing.assert_array_equal(meta["token_id"][rows], token_R)
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-2, atol=1e-2)
        np.testing.assert_allclose(got, want, **tol)
        # Position 0 of every context window (an outlier) is excluded.
        split = dataset.load_split(os.path.join(workdir, "data"), "train")
        index_R = split.doc_starts_D[meta["doc_id"]] - 1 + meta["position"]
        assert (index_R % 32 != 0).all() and len(np.unique(index_R)) == st.rows
        # norm scale makes E||c x|| = sqrt(d), estimated from the float32 values.
        all_rows = st.read_rows(0, st.rows)
        assert (
            abs(np.linalg.norm(all_rows * st.norm_scale, axis=1).mean() / np.sqrt(st.d) - 1) < 0.01
        )


def test_random_positions_per_context_are_reproducible():
    cfg = capture.capture_config_from(_config(positions_per_context=5))
    a = capture.kept_positions(cfg, 7, 32)
    np.testing.assert_array_equal(a, capture.kept_positions(cfg, 7, 32))
    assert len(a) == 5 and a.min() >= 1 and (np.diff(a) > 0).all()
    assert not np.array_equal(a, capture.kept_positions(cfg, 8, 32))


def _cmd(workdir, *extra):
    return [
        sys.executable,
        "-m",
        "monosem_jax.activations.main",
        f"--workdir={workdir}",
        f"--config={os.path.dirname(capture_default.__file__)}/default.py:smoke",
        f"--config.hooks={HOOKS}",
        "--config.batch_size=2",
        "--config.rows_per_shard=512",
        *extra,
    ]


def test_capture_kill_and_resume_matches_uninterrupted(smoke_lm_workdir, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    ref = str(tmp_path / "ref")
    out = subprocess.run(
        _cmd(smoke_lm_workdir, f"--config.kvstore={ref}"), capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(
        _cmd(smoke_lm_workdir, f"--config.kvstore={killed}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    progress = os.path.join(killed, "blocks.1.hook_mlp_post", "progress")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(progress) and json.load(open(progress)).get("rows", 0) >= 4096:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "capture finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not store.is_complete(store.kvstore_for(killed), "blocks.1.hook_mlp_post")
    with pytest.raises(store.StoreError, match="incomplete|COMPLETE|complete"):
        store.open_store(store.kvstore_for(killed), "blocks.1.hook_mlp_post")

    out = subprocess.run(
        _cmd(smoke_lm_workdir, f"--config.kvstore={killed}"),
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming capture at row" in out.stderr
    for hook in HOOKS.split(","):
        a = json.load(open(os.path.join(ref, hook, "COMPLETE")))
        b = json.load(open(os.path.join(killed, hook, "COMPLETE")))
        assert a["rows"] == b["rows"] and a["checksums"] == b["checksums"]


def test_memory_kvstore_round_trip(smoke_lm_workdir, copy_workdir):
    workdir = copy_workdir(smoke_lm_workdir)
    spec = {"driver": "memory", "path": "capture_test/"}
    summary = capture.capture(_config(kvstore=json.dumps(spec), max_rows=1000), workdir)
    st = store.open_store(spec, "blocks.0.hook_resid_post", expect_d=32, expect_dtype="float32")
    assert st.rows == summary["rows"] == 1000
    assert not os.path.exists(os.path.join(workdir, "acts", "blocks.0.hook_resid_post", "acts"))


def test_mismatches_and_missing_inputs_are_clear_errors(smoke_lm_workdir, copy_workdir, tmp_path):
    workdir = copy_workdir(smoke_lm_workdir)
    root = store.kvstore_for(os.path.join(workdir, "acts"))
    capture.capture(_config(max_rows=600), workdir)
    hook = "blocks.0.hook_resid_post"
    with pytest.raises(store.StoreError, match="d"):
        store.open_store(root, hook, expect_d=64)
    with pytest.raises(store.StoreError, match="bfloat16|dtype"):
        store.open_store(root, hook, expect_dtype="bfloat16")
    with pytest.raises(store.StoreError):
        store.open_store(root, "blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="unknown hook"):
        capture.capture(_config(hooks="blocks.9.hook_resid_post"), workdir)
    with pytest.raises(FileNotFoundError, match="no trained LM"):
        capture.capture(_config(), str(tmp_path / "empty"))
    # A finished capture reruns as a no-op; a different dtype on the same store is refused.
    assert capture.capture(_config(max_rows=600), workdir)["rows"] == 600
    os.remove(os.path.join(workdir, "acts", hook, "COMPLETE"))
    with pytest.raises(store.StoreError):
        capture.capture(_config(max_rows=600, dtype="bfloat16"), workdir)
