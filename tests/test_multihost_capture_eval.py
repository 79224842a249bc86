"""Capture and eval on JAX's multi-controller runtime: 2 OS processes x 4 CPU devices write the
store a single process writes (every row once, the same bytes) and resume a killed capture; eval
in 2 processes gives the 1-process figures. The 1-process references are the session fixture's
capture and an in-process eval, both on this process's 8 devices."""

import json
import math
import os
import shutil

import multihost
import numpy as np
import pytest

from monosem_jax import cli
from monosem_jax.activations import capture, store, store_writer
from monosem_jax.analysis import evaluate
from monosem_jax.configs.capture import default as capture_default
from monosem_jax.configs.eval import default as eval_default

HOOK = "blocks.0.hook_resid_post"  # the smoke capture's only hook
CAPTURE = ["--config=" + cli.default_config("capture/default.py") + ":smoke"]
EVAL = ["--config=" + cli.default_config("eval/default.py") + ":smoke"]
# Probe F1s come from an L-BFGS fit that XLA:CPU compiles differently for 4- and 8-device
# processes (evaluate.py's docstring); their inputs are the same, their last bits are not.
PROBE_FIGURES = {"probe_f1", "sparse_probe_f1_k1", "sparse_probe_f1_k2", "sparse_probe_f1_k5",
                 "sparse_probe_over_ceiling_k1", "concepts_sparse_probe_k1_over_ceiling_ge_0_9"}
TIMINGS = {"wall_s", "probe_wall_s", "density_png"}


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def _root(workdir):
    return store.kvstore_for(os.path.join(workdir, "acts"))


def _hook_files(workdir):
    """{relative path: bytes} of the hook's store, without the JSON that holds norm_sum."""
    top = os.path.join(workdir, "acts", HOOK)
    files = {}
    for folder, _, names in os.walk(top):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, top)] = f.read()
    return files


def assert_same_store(ref_workdir, workdir):
    """Every row once, as in the reference: the same shard bytes, rows, checksums; norm_sum
    (added per segment, then across them) equal up to its last bits."""
    ref, got = _hook_files(ref_workdir), _hook_files(workdir)
    jsons = {"COMPLETE", "progress", "acts/zarr.json", "summary.json"}
    assert set(got) == set(ref), set(got) ^ set(ref)  # no progress.<start> record left
    assert {k for k in ref if ref[k] != got[k]} <= jsons
    a, b = (json.loads(files["COMPLETE"]) for files in (ref, got))
    assert a.pop("norm_sum") == pytest.approx(b.pop("norm_sum"), rel=1e-12)
    assert a.pop("norm_scale") == pytest.approx(b.pop("norm_scale"), rel=1e-12)
    assert a == b  # rows, bytes, checksums
    a, b = (json.loads(files["acts/zarr.json"]) for files in (ref, got))
    assert a["attributes"].pop("norm_scale") == pytest.approx(
        b["attributes"].pop("norm_scale"), rel=1e-12)
    assert a == b
    ref_store, got_store = store.open_store(_root(ref_workdir), HOOK), store.open_store(
        _root(workdir), HOOK)
    np.testing.assert_array_equal(got_store.read_rows(0, 4096), ref_store.read_rows(0, 4096))


def killed_capture(ref_workdir, workdir, committed):
    """`workdir`'s store as a capture killed mid-way leaves it: the reference rows of each
    (start, stop) in `committed` written and recorded by their own writer, junk everywhere
    else (written, never committed)."""
    ref = store.open_store(_root(ref_workdir), HOOK)
    attributes = {k: v for k, v in ref.attributes.items() if k not in ("rows", "norm_scale")}
    spec = store.StoreSpec(_root(workdir), HOOK, ref.d, ref.dtype, ref.rows_per_shard)
    writer = store_writer.StoreWriter(spec, attributes)
    writer.reserve(ref.rows)
    writer._arrays["acts"][: ref.rows].write(np.full((ref.rows, ref.d), -7, np.float32)).result()
    for start, stop in committed:
        writer = store_writer.StoreWriter(spec, attributes, segment_start=start)
        meta = ref.read_meta(start, stop)
        writer.append(ref.read_rows(start, stop), meta["token_id"], meta["doc_id"],
                      meta["position"])
        writer.flush()
    assert not store.is_complete(spec.kvstore, HOOK)


def test_two_process_capture_writes_the_one_process_store(sae_workdir, smoke_lm_workdir, tmp_path):
    workdir = _copy(smoke_lm_workdir, tmp_path / "fresh")
    results = multihost.run("monosem_jax.activations.main", [f"--workdir={workdir}", *CAPTURE],
                            timeout=120)
    assert_same_store(sae_workdir, workdir)
    summaries = [json.loads(r.stdout.splitlines()[-1]) for r in results]
    assert summaries[0] == summaries[1] and summaries[0]["rows"] == store.open_store(
        _root(sae_workdir), HOOK).rows
    with open(os.path.join(workdir, "acts", HOOK, "summary.json")) as f:
        assert json.load(f)["processes"] == 2
    assert "process 0: " in results[0].stderr and "process 1: " in results[1].stderr

    # Killed: process 0 had committed shards [0, 4), process 1 (which started at shard 9)
    # [9, 12); both had written more. The same 2-process command resumes it.
    workdir = _copy(smoke_lm_workdir, tmp_path / "killed")
    killed_capture(sae_workdir, workdir, [(0, 4 * 4096), (9 * 4096, 12 * 4096)])
    results = multihost.run("monosem_jax.activations.main", [f"--workdir={workdir}", *CAPTURE],
                            timeout=120)
    assert all("resuming capture at row" in r.stderr for r in results)
    assert_same_store(sae_workdir, workdir)


def test_one_process_resumes_a_two_process_capture(sae_workdir, smoke_lm_workdir, tmp_path):
    workdir = _copy(smoke_lm_workdir, tmp_path / "w")
    # As above, plus a stale record inside segment 0 (a finalize killed before its clean-up):
    # dropped, never counted twice.
    killed_capture(sae_workdir, workdir, [(0, 4 * 4096), (2 * 4096, 3 * 4096),
                                          (9 * 4096, 12 * 4096)])
    assert len(store.read_segments(_root(workdir), HOOK)) == 3
    summary = capture.capture(capture_default.get_config("smoke"), workdir)
    assert summary["rows"] == store.open_store(_root(sae_workdir), HOOK).rows
    assert_same_store(sae_workdir, workdir)


def _assert_same_figures(ref, got, path=""):
    """Equal structure; numbers to float tolerance (probe F1s loosely, timings not at all)."""
    key = path.rsplit("/", 1)[-1]
    if isinstance(ref, dict):
        assert set(ref) == set(got), (path, set(ref) ^ set(got))
        for k in ref:
            if k not in TIMINGS:
                _assert_same_figures(ref[k], got[k], f"{path}/{k}")
    elif isinstance(ref, list):
        assert len(ref) == len(got), path
        for i, (a, b) in enumerate(zip(ref, got, strict=True)):
            _assert_same_figures(a, b, f"{path}/{i}" if key != "concept_table" else f"{path}[]")
    elif key in PROBE_FIGURES and ref is not None:
        assert got == pytest.approx(ref, abs=0.1 if isinstance(ref, float) else 2), path
    elif isinstance(ref, float) and not math.isinf(ref):
        assert got == pytest.approx(ref, rel=1e-4, abs=1e-7), path
    else:
        assert got == ref, path


def test_two_process_eval_equals_one_process(sae_workdir, tmp_path):
    ref_workdir = _copy(sae_workdir, tmp_path / "one")
    ref = evaluate.evaluate(eval_default.get_config("smoke"), ref_workdir)
    workdir = _copy(sae_workdir, tmp_path / "two")
    results = multihost.run("monosem_jax.analysis.eval_main", [f"--workdir={workdir}", *EVAL],
                            timeout=180)
    with open(os.path.join(workdir, "eval", f"{ref['sae_name']}.json")) as f:
        got = json.load(f)
    assert got["eval_tokens"] == ref["eval_tokens"] > 0  # every context counted once
    _assert_same_figures(ref, got)
    # Both processes hold the same totals: the same summary (timings aside).
    lines = [json.loads(r.stdout.splitlines()[-1]) for r in results]
    _assert_same_figures(lines[0], lines[1])
    features = [np.load(os.path.join(w, "eval", f"{ref['sae_name']}_features.npz"))
                for w in (ref_workdir, workdir)]
    for name in features[0].files:
        np.testing.assert_allclose(features[1][name], features[0][name], rtol=1e-4, atol=1e-7)


def test_two_process_capture_sae_eval_end_to_end(sae_workdir, smoke_lm_workdir, tmp_path):
    """The smoke pipeline's capture -> SAE -> eval, each stage a 2-process x 4-device cluster
    (the SAE's dictionary sharded over 4 'model' devices), ends at the 1-process figures: the same
    store, the same SAE to float32 tolerance, the same eval figures."""
    from monosem_jax.sae import artifact as sae_artifact

    workdir = _copy(smoke_lm_workdir, tmp_path / "two")
    multihost.run("monosem_jax.activations.main", [f"--workdir={workdir}", *CAPTURE], timeout=120)
    assert_same_store(sae_workdir, workdir)
    sae = ["--config=" + cli.default_config("sae/default.py") + ":smoke",
           "--config.model_parallel=4"]
    multihost.run("monosem_jax.sae.main", [f"--workdir={workdir}", *sae], timeout=180)
    got_sae, ref_sae = (sae_artifact.load_sae(w, "topk") for w in (workdir, sae_workdir))
    for name in ref_sae.params:
        np.testing.assert_allclose(got_sae.params[name], ref_sae.params[name], rtol=1e-3,
                                   atol=1e-5, err_msg=name)
    multihost.run("monosem_jax.analysis.eval_main", [f"--workdir={workdir}", *EVAL], timeout=180)
    ref = evaluate.evaluate(eval_default.get_config("smoke"), _copy(sae_workdir, tmp_path / "one"))
    with open(os.path.join(workdir, "eval", f"{ref['sae_name']}.json")) as f:
        got = json.load(f)
    assert got["eval_tokens"] == ref["eval_tokens"] > 0
    for key in ("explained_variance", "ce_loss_recovered", "l0", "dead_fraction"):
        assert got[key] == pytest.approx(ref[key], rel=1e-3, abs=1e-5), key
