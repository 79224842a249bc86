"""SAE training on JAX's multi-controller runtime: 2 OS processes x 4 CPU devices with the
dictionary sharded over 'model' train the same SAE as 1 process on 8 devices and on 1 device; a
killed process stops the other with a clear error, and the rerun resumes to the same end."""

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import multihost
import numpy as np
import pytest

from monosem_jax import cli, metrics_io, parallel
from monosem_jax.activations import store, store_writer
from monosem_jax.sae import artifact as sae_artifact
from monosem_jax.sae import loop as sae_loop
from monosem_jax.sae import main as sae_main
from monosem_jax.sae import model as sae_model
from monosem_jax.sae import step as sae_step

HOOK = "blocks.0.hook_resid_post"
D, ROWS, SHARD = 16, 8192, 1024
STEPS = 120
CONFIG = [
    f"--config={cli.default_config('sae/default.py')}:smoke", f"--config.steps={STEPS}",
    "--config.d_sae=128", "--config.k=8", "--config.k_start=8", "--config.batch_size=256",
    "--config.eval_rows=1024", "--config.checkpoint_every=20", "--config.log_every=20",
]
SHARDED = ["--config.model_parallel=4"]  # 8 devices: (data 2, model 4)


def _store(workdir):
    """Sparse non-negative combinations of 48 directions, in W/acts."""
    rng = np.random.default_rng(0)
    dirs = rng.standard_normal((48, D)).astype(np.float32)
    x = (rng.exponential(1.0, (ROWS, 48)) * (rng.random((ROWS, 48)) < 0.08)) @ dirs
    spec = store.StoreSpec(store.kvstore_for(os.path.join(workdir, "acts")), HOOK, D, "float32",
                           SHARD)
    store_writer.write_array(spec, x.astype(np.float32), {"test": True})
    return str(workdir)


def _params(workdir):
    return sae_artifact.load_run(os.path.join(workdir, "sae", "topk")).params


def _summary(workdir):
    return metrics_io.read_json(os.path.join(workdir, "sae", "topk", "summary.json"))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """The uninterrupted 2-process x 4-device run (the reference of both tests)."""
    workdir = _store(tmp_path_factory.mktemp("two_process"))
    results = multihost.run("monosem_jax.sae.main", [f"--workdir={workdir}", *CONFIG, *SHARDED])
    return workdir, results


def test_two_processes_equal_one_process_and_one_device(two_process_run, tmp_path):
    workdir, results = two_process_run
    # Only process 0 writes the run's files; both print the same summary (timings aside).
    printed = [json.loads(r.stdout.splitlines()[-1]) for r in results]
    for summary in printed:
        for timing in ("tokens_per_s", "wall_s"):
            summary.pop(timing)
    assert printed[0] == printed[1]
    eight = _store(tmp_path / "eight")
    assert cli.run_in_process(sae_main.run_main, [f"--workdir={eight}", *CONFIG, *SHARDED]) == 0
    one = _store(tmp_path / "one")
    subprocess.run([sys.executable, "-m", "monosem_jax.sae.main", f"--workdir={one}", *CONFIG],
                   env=multihost.environment(1), check=True, capture_output=True)
    ref = _params(workdir)
    for other in (eight, one):
        got = _params(other)
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], rtol=2e-4, atol=2e-5, err_msg=name)
    summaries = [_summary(w) for w in (workdir, eight, one)]
    assert [s["step_compilations"] for s in summaries] == [1, 1, 1]
    evs = [s["explained_variance"] for s in summaries]
    assert max(evs) - min(evs) < 1e-5 and evs[0] > 0.85


def test_killed_process_stops_both_and_rerun_resumes(two_process_run, tmp_path):
    reference, _ = two_process_run
    workdir = _store(tmp_path)
    args = [f"--workdir={workdir}", *CONFIG, *SHARDED]
    procs = multihost.start("monosem_jax.sae.main", args)
    first_checkpoint = os.path.join(workdir, "sae", "topk", "checkpoints", "40")
    deadline = time.monotonic() + 120
    while not os.path.exists(first_checkpoint) and time.monotonic() < deadline:
        assert procs[0].poll() is None, procs[0].communicate()[1][-3000:]
        time.sleep(0.05)
    procs[1].kill()
    killed_at = time.monotonic()
    survivor = multihost.wait(procs[:1], timeout=60)[0]
    assert time.monotonic() - killed_at < 60
    assert survivor.returncode == 3, survivor.stderr[-3000:]
    errors = [line for line in survivor.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "process 0 of 2: the cluster failed" in errors[0], errors
    procs[1].communicate()

    results = multihost.run("monosem_jax.sae.main", args)
    summary = _summary(workdir)
    assert 40 <= summary["resumed_from_step"] < STEPS
    assert "resuming SAE topk from checkpoint" in results[1].stderr
    got, ref = _params(workdir), _params(reference)
    for name in ref:  # resume is exact: the same program, data order and checkpointed state
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


@pytest.mark.parametrize("variant", ["batchtopk", "anthropic_2024", "jumprelu"])
def test_sharded_step_compiles_once_and_matches_unsharded(variant):
    """The jitted sharded step (dictionary over 4 devices, batch over 2) runs 3 steps on one
    compiled program, and its states equal the single-device step's: the sparse steps too (the
    ReLU variants at an explicit capacity, d_sae being below the automatic one's floor)."""
    cfg = sae_model.SAEConfig(variant=variant, d=D, d_sae=64, k=4, k_aux=16, sparse_capacity=16)
    hp = sae_step.default_hparams(cfg, k=4)
    state = jax.device_get(sae_step.init_state(cfg, jax.random.key(0)))
    xs = np.random.default_rng(1).standard_normal((3, 32, D)).astype(np.float32)
    plain_fn = sae_loop.compile_step(cfg)
    plain = jax.device_put(state)
    for x in xs:
        _, plain, _ = plain_fn((), plain, x, hp)

    mesh = parallel.make_mesh(4)
    shardings = parallel.dictionary_shardings(mesh, state)
    rep = parallel.replicated(mesh)
    fn = sae_loop.compile_step(cfg, shardings=((), shardings, parallel.data_sharding(mesh), rep))
    with jax.set_mesh(mesh):
        sharded = jax.tree.map(parallel.place, state, shardings)
        hps = jax.tree.map(lambda a: parallel.place(a, rep), jax.device_get(hp))
        for x in xs:
            _, sharded, _ = fn((), sharded, parallel.place(x, parallel.data_sharding(mesh)), hps)
    assert fn._cache_size() == 1
    assert sharded["params"]["w_enc_DF"].sharding.spec == jax.sharding.PartitionSpec(None,
                                                                                      "model")
    for got, want in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_parallel", [2, 4, 8])
def test_sharded_selection_equals_unsharded(model_parallel):
    """Shard-local top k then merge selects exactly lax.top_k's entries (values and indices, in
    order) on ties-free inputs, for per-row TopK, BatchTopK and inside a vmapped sweep."""
    z_BF = jax.random.normal(jax.random.key(model_parallel), (16, 256))
    want_row = jax.lax.top_k(z_BF, 8)
    want_batch = jax.lax.top_k(z_BF.reshape(-1), 64)
    mesh = parallel.make_mesh(model_parallel)
    placed = parallel.place(np.asarray(z_BF), jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec("data", "model")))
    with jax.set_mesh(mesh):
        assert sae_model.shard_select.model_shards(256, 8) == model_parallel
        row, batch = jax.jit(lambda z: (sae_model.topk_select(z, 8),
                                        sae_model.batchtopk_select(z, 4)))(placed)
        members = jax.jit(jax.vmap(lambda z: sae_model.topk_select(z, 8)))(
            jnp.stack([z_BF, -z_BF]))
    np.testing.assert_array_equal(row[1], want_row[1])
    np.testing.assert_array_equal(row[0], jax.nn.relu(want_row[0]))
    np.testing.assert_array_equal(batch[1], want_batch[1])
    np.testing.assert_array_equal(batch[0], jax.nn.relu(want_batch[0]))
    np.testing.assert_array_equal(members[1][1], jax.lax.top_k(-z_BF, 8)[1])


@pytest.mark.parametrize("strategy", ["vmap", "map"])
def test_sharded_sweep_equals_unsharded(tmp_path, strategy):
    """A sweep's members trained with their dictionaries over 4 devices equal the same sweep
    with whole dictionaries (each member written as a run, as always)."""
    from monosem_jax.sae import sweep_main

    args = [*CONFIG[:1], "--config.steps=30", "--config.d_sae=64", "--config.k_start=0",
            "--config.batch_size=128", "--config.eval_rows=1024",
            "--config.sweep.grid=k=4,8", f"--config.sweep.strategy={strategy}"]
    runs = []
    for model_parallel in (1, 4):
        workdir = _store(tmp_path / str(model_parallel))
        argv = [f"--workdir={workdir}", *args, f"--config.model_parallel={model_parallel}"]
        assert cli.run_in_process(sweep_main.run_main, argv) == 0
        runs.append(workdir)
    for member in ("sweep_0", "sweep_1"):
        got, want = (sae_artifact.load_run(os.path.join(w, "sae", member)).params for w in runs)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=2e-4, atol=2e-5,
                                       err_msg=f"{member} {name}")
