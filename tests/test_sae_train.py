"""SAE training runs and sweeps: summaries, resume after SIGKILL, NaN handling, bad input."""

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorstore as ts

import monosem_jax
from monosem_jax import checkpoint
from monosem_jax.activations import reader as reader_lib
from monosem_jax.activations import store, store_writer
from monosem_jax.configs.sae import default as sae_default
from monosem_jax.sae import artifact as sae_artifact
from monosem_jax.sae import metrics as sae_metrics
from monosem_jax.sae import model as sae_model
from monosem_jax.sae import run as sae_run
from monosem_jax.sae import step as sae_step
from monosem_jax.sae import sweep as sae_sweep
from monosem_jax.sae import train as sae_train

HOOK = "blocks.0.hook_resid_post"
D, ROWS, SHARD = 16, 12288, 1024


def _write_store(root, nan_block=None):
    """Sparse non-negative combinations of 64 directions; optionally one block is then
    overwritten with NaN in place (as a corrupted disk would), behind the writer's checks."""
    rng = np.random.default_rng(0)
    dirs = rng.standard_normal((64, D)).astype(np.float32)
    codes = rng.exponential(1.0, (ROWS, 64)) * (rng.random((ROWS, 64)) < 0.06)
    x = (codes @ dirs).astype(np.float32)
    spec = store.StoreSpec(store.kvstore_for(root), HOOK, D, "float32", SHARD)
    store_writer.write_array(spec, x, {"test": True})
    if nan_block is not None:
        acts = ts.open(
            {"driver": "zarr3", "kvstore": store.join(spec.kvstore, f"{HOOK}/acts/")},
            context=store.shared_context(),
        ).result()
        acts[nan_block * SHARD : (nan_block + 1) * SHARD].write(
            np.full((SHARD, D), np.nan, np.float32)
        ).result()
    return root


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    return _write_store(str(tmp_path_factory.mktemp("store") / "acts"))


def _config(root, **overrides):
    config = sae_default.get_config("smoke")
    config.variant = "anthropic_2024"  # the loop's tests pin the paper's SAE, not the default
    config.k_start = 0  # and a fixed k for the k variants (the anneal has its own test)
    config.store = root
    config.d_sae = 64
    config.batch_size = 128
    config.eval_rows = 2048
    config.update(overrides)
    return config


def _spec(config, workdir):
    return sae_run.run_spec(sae_run.TrainConfig.from_config(config), workdir, D)


def test_train_writes_held_out_summary(store_root, tmp_path):
    summary = sae_train.train_sae(_config(store_root, steps=60), str(tmp_path))
    for key in (
        "variant",
        "d_sae",
        "steps",
        "tokens",
        "mse",
        "nmse",
        "explained_variance",
        "l0",
        "dead_fraction",
        "dense_fraction",
        "tokens_per_s",
        "wall_s",
    ):
        assert key in summary, key
    assert summary["variant"] == "anthropic_2024" and summary["tokens"] == 60 * 128
    assert summary["eval_rows"] == 2048 and 0 < summary["explained_variance"] < 1
    run_dir = tmp_path / "sae" / "anthropic_2024"
    assert np.load(run_dir / "feature_density.npy").shape == (64,)
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    # A rerun of a finished run is a no-op returning the same summary.
    assert sae_train.train_sae(_config(store_root, steps=60), str(tmp_path)) == summary


@pytest.mark.parametrize("variant", ["topk", "towards_2023", "jl", "jumprelu", "matryoshka",
                                     "batchtopk", "matryoshka_batchtopk"])
def test_every_variant_trains(store_root, tmp_path, variant, caplog):
    caplog.set_level(logging.INFO)
    config = _config(store_root, steps=30, variant=variant, resample_steps=(15,), dead_steps=5)
    summary = sae_train.train_sae(config, str(tmp_path))
    assert summary["variant"] == variant and np.isfinite(summary["mse"])
    assert 0 < summary["explained_variance"] < 1
    sae = sae_artifact.load_sae(str(tmp_path), variant)
    params = {k: np.asarray(v) for k, v in sae.params.items()}
    # One invariant of what makes each variant itself.
    if variant in sae_model.UNIT_NORM_DECODER:  # towards_2023 and the TopK family
        np.testing.assert_allclose(np.linalg.norm(params["w_dec_FD"], axis=1), 1.0, atol=1e-5)
    if variant == "topk":
        assert summary["l0"] <= 8
    if variant == "towards_2023":  # resampled at step 15 (its latents silent for 5 steps)
        assert "step 15: resampled dead latents" in caplog.text
    if variant == "jumprelu":  # θ is learned: it moved from its initial value, per latent
        theta_F = np.exp(params["log_threshold_F"])
        assert not np.allclose(theta_F, sae.sae_cfg.jumprelu_threshold_init)
    if variant in sae_model.BATCH_TOPK:  # the inference threshold was estimated
        assert float(params["threshold"]) > 0
    if variant in ("matryoshka", "matryoshka_batchtopk"):  # the first prefix alone is worse
        st = sae_artifact.training_store(config.store, config.hook, str(tmp_path))
        x_ND = st.read_rows(0, 512) * sae.norm_scale  # the SAE's input units
        f_NF = np.asarray(sae_model.encode(sae.sae_cfg, sae.params, x_ND, sae.hparams))
        first = sae_model.resolve_prefixes(sae.sae_cfg.prefixes, sae.sae_cfg.d_sae)[0]

        def mse(f_NF):
            return float(np.mean((np.asarray(sae_model.decode(sae.params, f_NF)) - x_ND) ** 2))

        assert mse(f_NF * (np.arange(f_NF.shape[1]) < first)) > mse(f_NF)


def test_matryoshka_prefixes_are_recorded_and_reloaded(store_root, tmp_path):
    config = _config(store_root, steps=20, variant="matryoshka", prefixes=(8, 32))
    sae_train.train_sae(config, str(tmp_path))
    run_dir = tmp_path / "sae" / "matryoshka"
    recorded = json.load(open(run_dir / "config.json"))
    assert recorded["sae_config"]["prefixes"] == [8, 32, 64]  # d_sae appended
    row = json.loads(open(run_dir / "metrics.jsonl").readline())
    assert {"mse_prefix0", "mse_prefix1"} <= set(row) and "mse_prefix2" not in row
    assert row["mse_prefix0"] > row["mse_prefix1"] > row["mse"]
    loaded = sae_artifact.load_sae(str(tmp_path), "matryoshka")
    assert loaded.sae_cfg.prefixes == (8, 32, 64)  # a tuple again (hashable: a static jit arg)


@pytest.mark.parametrize("variant", ["batchtopk", "matryoshka_batchtopk"])
def test_batchtopk_threshold_calibrates_inference_and_reloads(store_root, tmp_path, variant):
    # threshold_rate 0.1: a ~10-step window, so θ follows the batch threshold within 60 steps
    # (the default 0.01 suits the pipeline's 600 steps; here θ would still lag at L0 ~20).
    k, steps = 8, 60
    config = _config(store_root, steps=steps, variant=variant, k=k, dead_steps=5,
                     threshold_rate=0.1)
    summary = sae_train.train_sae(config, str(tmp_path))
    run_dir = tmp_path / "sae" / variant
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    # Training: the batch rule keeps exactly k·B activations (all positive here), k per row.
    assert all(r["l0"] == pytest.approx(k) for r in rows)
    thetas = [r["threshold"] for r in rows]
    assert min(thetas) > 0 and thetas[-1] != thetas[0]  # estimated and moving
    assert summary["threshold"] == pytest.approx(thetas[-1], rel=1e-6)
    # Inference: the θ rule alone gives about k per row, held out and on a training batch.
    assert abs(summary["l0"] - k) < 0.25 * k, summary["l0"]
    loaded = sae_artifact.load_sae(str(tmp_path), variant)
    assert loaded.sae_cfg.variant == variant and loaded.step == steps
    assert float(loaded.params["threshold"]) == pytest.approx(summary["threshold"], rel=1e-6)
    st = store.open_store(store.kvstore_for(store_root), HOOK)
    reader = reader_lib.ActivationReader(
        st, sae_run.TrainConfig.from_config(config).reader_config(config.seed))
    batches = reader.iterate(steps - 1)
    x_BD = np.asarray(next(batches))
    batches.close()
    reader.close()
    f_BF = np.asarray(sae_model.encode(loaded.sae_cfg, loaded.params, x_BD, loaded.hparams))
    assert abs(np.mean(np.sum(f_BF > 0, axis=1)) - k) < 0.25 * k
    # The analysis path (artifact.feature_acts, in hook units) encodes with θ, row by row.

    hook_1ND = x_BD[None] / loaded.norm_scale
    acts_NF = np.asarray(sae_artifact.feature_acts(loaded, hook_1ND))[0]
    want_NF = f_BF * np.asarray(sae_model.decoder_norms(loaded.params))[None]
    np.testing.assert_allclose(acts_NF, want_NF, rtol=1e-4, atol=1e-5)
    alone = np.asarray(sae_artifact.feature_acts(loaded, hook_1ND[:, 3:4]))[0, 0]
    np.testing.assert_allclose(alone, acts_NF[3], rtol=1e-4, atol=1e-5)


def test_an_sae_folder_copied_alone_loads_and_encodes_without_its_store(store_root, tmp_path):
    acts = str(tmp_path / "acts")
    shutil.copytree(store_root, acts)
    workdir = tmp_path / "w"
    sae_train.train_sae(_config(acts, steps=20, variant="topk", k=4), str(workdir))
    in_place = sae_artifact.load_sae(str(workdir), "topk")
    moved = tmp_path / "elsewhere" / "my_sae"
    shutil.copytree(workdir / "sae" / "topk", moved)
    # A run recorded before config.json held norm_scale and hook reads them from its store.
    config_path = workdir / "sae" / "topk" / "config.json"
    legacy = {k: v for k, v in json.loads(config_path.read_text()).items()
              if k not in ("norm_scale", "hook")}
    config_path.write_text(json.dumps(legacy))
    assert sae_artifact.load_sae(str(workdir), "topk").norm_scale == in_place.norm_scale
    shutil.rmtree(acts)  # the store and the work dir are gone: the folder is all there is
    shutil.rmtree(workdir)
    sae = monosem_jax.load_sae_run(str(moved))  # the public API
    assert (sae.name, sae.hook, sae.step) == ("my_sae", HOOK, 20)
    assert sae.norm_scale == in_place.norm_scale > 0
    x_1ND = np.random.default_rng(1).standard_normal((1, 6, D)).astype(np.float32)
    acts_NF = np.asarray(monosem_jax.feature_acts(sae, x_1ND))[0]
    in_place_NF = np.asarray(sae_artifact.feature_acts(in_place, x_1ND))[0]
    np.testing.assert_array_equal(acts_NF, in_place_NF)
    assert acts_NF.shape == (6, 64) and ((acts_NF > 0).sum(axis=1) <= 4).all()
    assert np.isfinite(np.asarray(monosem_jax.reconstruct(sae, x_1ND))).all()


def test_held_out_rows_are_never_trained_on(store_root):
    st = store.open_store(store.kvstore_for(store_root), HOOK)
    config = _config(store_root)
    reader = reader_lib.ActivationReader(
        st, sae_run.TrainConfig.from_config(config).reader_config(0))
    seen = np.concatenate([reader.batch_indices(s) for s in range(reader.steps_per_epoch)])
    assert seen.max() < ROWS - config.eval_rows
    reader.close()


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(variant="topk", k=100), "k"),
        (dict(l1_coef=-1.0), "l1_coef"),
        (dict(d_sae=0), "d_sae"),
        (dict(variant="relu9"), "variant"),
        (dict(steps=0), "steps"),
        (dict(variant="matryoshka", prefixes=(32, 8)), "prefixes"),
        (dict(variant="matryoshka", prefixes=("8", "x")), "prefixes"),
        (dict(variant="batchtopk", k=100), "k"),
        (dict(variant="matryoshka_batchtopk", threshold_rate=2.0), "threshold_rate"),
    ],
)
def test_invalid_hyperparameters_are_clear_errors(store_root, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        sae_train.train_sae(_config(store_root, **override), str(tmp_path))
    assert not os.path.exists(tmp_path / "sae")  # nothing written for a rejected config


def _cmd(root, workdir, *extra):
    return [
        sys.executable,
        "-m",
        "monosem_jax.sae.main",
        f"--workdir={workdir}",
        f"--config={os.path.dirname(sae_default.__file__)}/default.py:smoke",
        f"--config.store={root}",
        "--config.d_sae=256",
        "--config.batch_size=512",
        "--config.eval_rows=2048",
        "--config.variant=anthropic_2024",  # the loop's tests pin the paper's SAE, not the default
        *extra,
    ]


def test_cli_bad_variant_exits_with_one_line(store_root, tmp_path):
    out = subprocess.run(
        _cmd(store_root, tmp_path, "--config.variant=nope"),
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "variant" in out.stderr.strip().splitlines()[-1]


def test_kill_and_resume_matches_uninterrupted(store_root, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    extra = ("--config.steps=1500", "--config.checkpoint_every=100", "--config.log_every=100")
    ref = subprocess.run(
        _cmd(store_root, tmp_path / "ref", *extra), capture_output=True, text=True, env=env
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    ref_summary = json.loads(ref.stdout.strip().splitlines()[-1])

    workdir = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(store_root, workdir, *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    ckpts = workdir / "sae" / "anthropic_2024" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any(p.name.isdigit() and int(p.name) >= 300 for p in ckpts.iterdir()):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = subprocess.run(_cmd(store_root, workdir, *extra), capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming SAE anthropic_2024 from checkpoint at step" in out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0 < summary["resumed_from_step"] < 1500
    for key in ("mse", "explained_variance", "l0", "dead_fraction"):
        np.testing.assert_allclose(summary[key], ref_summary[key], rtol=1e-4, atol=1e-6)


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(store_root, tmp_path):
    config = _config(store_root, steps=200, checkpoint_every=10)
    # The data order does not depend on the values: find the block the reader reaches last.
    st = store.open_store(store.kvstore_for(store_root), HOOK)
    reader = reader_lib.ActivationReader(
        st, sae_run.TrainConfig.from_config(config).reader_config(config.seed))
    first_seen = {}
    for s in range(reader.steps_per_epoch):
        for block in np.unique(reader.batch_indices(s) // SHARD):
            first_seen.setdefault(int(block), s)
    reader.close()
    bad_block = max(first_seen, key=first_seen.get)
    first_bad = first_seen[bad_block]
    assert first_bad > 10, "the fixture needs a good checkpoint before the bad batch"
    config.store = _write_store(str(tmp_path / "nan_acts"), nan_block=bad_block)
    with pytest.raises(FloatingPointError, match=f"loss is nan at step {first_bad}"):
        sae_train.train_sae(config, str(tmp_path))
    ckpt = checkpoint.Checkpointer(
        tmp_path / "sae" / "anthropic_2024" / "checkpoints", save_every=10
    )
    last = ckpt.latest_step()
    assert last is not None and last <= first_bad
    spec = _spec(config, str(tmp_path))
    abstract = checkpoint.abstract_like(sae_step.init_state(spec.sae_cfg, jax.random.key(0)))
    state, _ = ckpt.restore(abstract)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))
    ckpt.close()
    assert not os.path.exists(tmp_path / "sae" / "anthropic_2024" / "summary.json")


@pytest.mark.parametrize("strategy", ["vmap", "map", "loop"])
def test_sweep_compiles_once_and_members_match_single_runs(store_root, tmp_path, strategy):
    config = _config(store_root, steps=30)
    config.sweep.grid = ("l1_coef=1,4 seed=0,1",)  # as --config.sweep.grid="l1_coef=1,4 seed=0,1"
    config.sweep.strategy = strategy
    summary = sae_sweep.sweep(config, str(tmp_path))
    assert summary["members"] == 4 and summary["strategy"] == strategy
    assert summary["step_compilations"] == 1  # one trace for all steps and members
    table = list(csv.DictReader(open(tmp_path / "sweep" / "sweep" / "table.csv")))
    assert [(float(r["l1_coef"]), int(r["seed"])) for r in table] == [
        (1.0, 0),
        (1.0, 1),
        (4.0, 0),
        (4.0, 1),
    ]
    assert (tmp_path / "sweep" / "sweep" / "frontier.png").stat().st_size > 1000
    # Member 3 (l1_coef=4, seed=1) equals the same configuration trained alone with the
    # sweep's data order (data_seed = the sweep's seed).
    alone = sae_train.train_sae(
        _config(store_root, steps=30, l1_coef=4.0, seed=1, data_seed=0, name="alone"), str(tmp_path)
    )
    member = json.load(open(tmp_path / "sae" / "sweep_3" / "summary.json"))
    for key in ("mse", "explained_variance", "l0"):
        np.testing.assert_allclose(member[key], alone[key], rtol=2e-3)
    assert (tmp_path / "sae" / "sweep_3" / "checkpoints" / "30").is_dir()


def test_batchtopk_sweep_over_k_compiles_once_and_matches_single_run(store_root, tmp_path):
    config = _config(store_root, steps=30, variant="batchtopk", threshold_rate=0.1)
    config.sweep.grid = ("k=4,8",)
    config.sweep.strategy = "vmap"
    assert sae_sweep.sweep(config, str(tmp_path))["step_compilations"] == 1
    # Member 0 (k=4) ran with the sweep's static k = 8 and a traced k = 4: the same run as k = 4
    # alone (static k = 4).
    alone = sae_train.train_sae(
        _config(store_root, steps=30, variant="batchtopk", threshold_rate=0.1, k=4,
                name="alone"), str(tmp_path))
    member = json.load(open(tmp_path / "sae" / "sweep_0" / "summary.json"))
    for key in ("mse", "explained_variance", "l0", "threshold"):
        np.testing.assert_allclose(member[key], alone[key], rtol=2e-3)
    wide = json.load(open(tmp_path / "sae" / "sweep_1" / "summary.json"))
    assert member["threshold"] > wide["threshold"] > 0 and member["l0"] < wide["l0"]


def test_annealed_k_switches_to_a_step_compiled_for_the_final_k(store_root, tmp_path):
    # Alone, train_sae switches to a step compiled for k = 4 once the anneal is over (step 15):
    # the same run as with the static bound max(k_start, k) = 16 throughout, at the small k's
    # price.
    overrides = dict(steps=30, variant="topk", k_start=16, k_anneal_frac=0.5)
    spec = _spec(_config(store_root, k=4, **overrides), str(tmp_path))
    assert sae_run.k_settled_step(spec) == 15 and spec.sae_cfg.k == 16
    config = _config(store_root, **overrides)
    config.sweep.grid = ("k=4,8",)
    config.sweep.strategy = "vmap"
    # The sweep switches too, to a step compiled for its largest final k (8) from step 15 on.
    assert sae_sweep.sweep(config, str(tmp_path))["step_compilations"] == 2
    alone = sae_train.train_sae(_config(store_root, k=4, name="alone", **overrides), str(tmp_path))
    assert alone["step_compilations"] == 2
    member = json.load(open(tmp_path / "sae" / "sweep_0" / "summary.json"))
    for key in ("mse", "explained_variance", "l0"):
        np.testing.assert_allclose(member[key], alone[key], rtol=2e-3)
    assert alone["l0"] <= 4
    no_anneal = _spec(_config(store_root, steps=30, variant="topk", k_start=0), "w")
    assert sae_run.k_settled_step(no_anneal) is None


def test_bad_sweep_grids_are_clear_errors():
    with pytest.raises(ValueError, match="bad sweep axis"):
        sae_sweep.parse_grid("d_sae=1,2")
    with pytest.raises(ValueError, match="empty"):
        sae_sweep.parse_grid("  ")
    expected = [{"lr": 1e-3, "k": 4}, {"lr": 1e-3, "k": 8}]
    assert sae_sweep.parse_grid("lr=1e-3 k=4,8") == expected
    assert sae_sweep.parse_grid(("lr=1e-3", "k=4,8")) == expected  # the config file's tuple form
    with pytest.raises(ValueError, match="bad value"):
        sae_sweep.parse_grid(("k=4,x",))


def test_held_out_metrics_do_not_depend_on_chunking():
    # 1000 rows in chunks of 300 (the last padded) against one chunk and plain numpy.
    cfg = sae_model.SAEConfig(variant="topk", d=D, d_sae=64, k=4, k_aux=16)
    params = sae_model.init_params(cfg, jax.random.key(0))
    hp = sae_step.default_hparams(cfg)
    x_ND = np.random.default_rng(0).standard_normal((1000, D)).astype(np.float32) + 1.0
    chunked, density_F = sae_metrics.evaluate(cfg, params, hp, x_ND, chunk=300)
    whole, whole_density_F = sae_metrics.evaluate(cfg, params, hp, x_ND, chunk=1000)
    for key in ("mse", "nmse", "explained_variance", "l0"):
        np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-5)
    np.testing.assert_array_equal(density_F, whole_density_F)
    f_NF = np.asarray(sae_model.encode(cfg, params, x_ND, hp))
    err_N = np.sum((x_ND - np.asarray(sae_model.decode(params, f_NF))) ** 2, axis=1)
    np.testing.assert_allclose(chunked["mse"], err_N.mean(), rtol=1e-4)
    total_var = np.sum((x_ND - x_ND.mean(0)) ** 2)
    np.testing.assert_allclose(chunked["explained_variance"], 1 - err_N.sum() / total_var,
                               rtol=1e-4)
    assert chunked["l0"] == pytest.approx(4.0) and chunked["eval_rows"] == 1000
