"""Verified artifacts: checkpoint digests checked on restore, store chunks checked on read.

Real Orbax checkpoints and real TensorStore stores, corrupted on disk by flipping bytes.
"""

import glob
import json
import logging
import os

import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts

from monosem_jax import checkpoint
from monosem_jax.activations import reader as reader_lib
from monosem_jax.activations import store as store_lib
from monosem_jax.activations import store_writer
from monosem_jax.analysis import eval_main
from monosem_jax.configs.eval import default as eval_default
from monosem_jax.configs.sae import default as sae_default
from monosem_jax.errors import CorruptCheckpoint, StoreError
from monosem_jax.sae import artifact as sae_artifact
from monosem_jax.sae import main as sae_main
from monosem_jax.sae import train as sae_train

SAE_CONFIG = os.path.join(os.path.dirname(sae_default.__file__), "default.py:smoke")
EVAL_CONFIG = os.path.join(os.path.dirname(eval_default.__file__), "default.py:smoke")


def _flip(path: str, everything: bool = False) -> None:
    """Flips one byte in the middle of a file (or every byte of it)."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if everything:
        data = bytearray(b ^ 0xFF for b in data)
    else:
        data[len(data) // 2] ^= 0x01
    with open(path, "wb") as f:
        f.write(bytes(data))


def _data_files(step_dir: str) -> list[str]:
    """A step's OCDBT data files (the `d/` folders), largest first."""
    found = glob.glob(os.path.join(step_dir, "**", "d", "*"), recursive=True)
    return sorted(found, key=lambda p: (-os.path.getsize(p), p))


def _corrupted_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is corrupted" in r.getMessage()]


# --- checkpoints ----------------------------------------------------------------------------

def _state(step: int) -> dict:
    return {"w": jnp.arange(20_000, dtype=jnp.float32) + step, "b": jnp.full((16, 8), float(step)),
            "step": jnp.asarray(step, jnp.int32)}


def _saved_steps(directory, steps=(10, 20, 30)) -> None:
    ckpt = checkpoint.Checkpointer(directory, save_every=10)
    for step in steps:
        ckpt.save(step, _state(step), {"step": step})
    ckpt.close()


def _resume(directory):
    ckpt = checkpoint.Checkpointer(directory, save_every=10)
    try:
        return ckpt.restore(checkpoint.abstract_like(_state(0)))
    finally:
        ckpt.close()


def test_every_final_step_gets_a_digest_that_orbax_ignores(tmp_path):
    directory = str(tmp_path / "checkpoints")
    _saved_steps(directory)
    assert sorted(os.listdir(directory)) == ["20", "30"]  # max_to_keep=2 removed step 10 whole
    for step in (20, 30):
        with open(os.path.join(directory, str(step), checkpoint.DIGEST_FILE)) as f:
            recorded = json.load(f)["files"]
        on_disk = sorted(os.path.relpath(p, os.path.join(directory, str(step)))
                         for p in glob.glob(os.path.join(directory, str(step), "**", "*"),
                                            recursive=True) if os.path.isfile(p))
        assert sorted(recorded) == [p for p in on_disk if p != checkpoint.DIGEST_FILE]
        assert checkpoint.first_mismatch(os.path.join(directory, str(step))) is None
    state, meta = _resume(directory)
    assert meta == {"step": 30} and int(state["step"]) == 30
    loader = checkpoint.Checkpointer(directory, save_every=1, this_process_only=True)
    part = loader.restore_part({"w": checkpoint.abstract_like(_state(0))["w"]}, 20)
    loader.close()
    np.testing.assert_array_equal(part["w"], _state(20)["w"])


@pytest.mark.parametrize("corrupt", ["largest", "second", "xor_all", "xor_all_no_digest"])
def test_resume_sets_a_corrupted_newest_step_aside(tmp_path, caplog, corrupt):
    directory = str(tmp_path / "checkpoints")
    _saved_steps(directory)
    newest = os.path.join(directory, "30")
    files = _data_files(newest)
    assert len(files) >= 2
    if corrupt == "xor_all_no_digest":  # killed before its digest: the restore itself fails
        os.remove(os.path.join(newest, checkpoint.DIGEST_FILE))
    flipped = {"largest": files[:1], "second": files[1:2]}.get(corrupt, files)
    for path in flipped:
        _flip(path, everything=corrupt.startswith("xor"))
    bad = min(os.path.relpath(p, newest) for p in flipped)  # the first (sorted) that fails

    loader = checkpoint.Checkpointer(directory, save_every=1, this_process_only=True)
    with pytest.raises(CorruptCheckpoint) as raised:
        loader.restore_part({"w": checkpoint.abstract_like(_state(0))["w"]}, 30)
    loader.close()
    message = str(raised.value)
    assert "\n" not in message and f"step 30 of {tmp_path}" in message
    assert f"delete {newest} and {tmp_path / 'summary.json'}" in message
    if corrupt != "xor_all_no_digest":
        assert bad in message
    assert os.path.isdir(newest)  # a loader never moves anything

    with caplog.at_level(logging.WARNING):
        state, meta = _resume(directory)
    assert meta == {"step": 20}
    np.testing.assert_array_equal(state["w"], _state(20)["w"])
    lines = _corrupted_lines(caplog)
    assert len(lines) == 1 and "step 30" in lines[0] and directory in lines[0], lines
    if corrupt != "xor_all_no_digest":
        assert bad in lines[0]
    aside = directory + ".corrupted"
    assert os.listdir(directory) == ["20"] and os.listdir(aside) == ["30"]
    for path in files:  # kept whole, corrupted bytes and all
        assert os.path.exists(os.path.join(aside, "30", os.path.relpath(path, newest)))

    # The resumed run saves step 30 again, verified, and a later resume takes it.
    ckpt = checkpoint.Checkpointer(directory, save_every=10)
    ckpt.restore(checkpoint.abstract_like(_state(0)))
    ckpt.save(30, _state(30), {"step": 30})
    ckpt.close()
    assert checkpoint.first_mismatch(newest) is None
    assert os.path.exists(os.path.join(newest, checkpoint.DIGEST_FILE))
    assert _resume(directory)[1] == {"step": 30}


def test_no_intact_step_is_one_clear_error_and_an_undigested_step_is_unverified(tmp_path,
                                                                                caplog):
    directory = str(tmp_path / "checkpoints")
    _saved_steps(directory)
    for step in (20, 30):
        _flip(_data_files(os.path.join(directory, str(step)))[0])
    with pytest.raises(CorruptCheckpoint, match=r"no intact checkpoint left in .*steps \[30, 20\]"):
        _resume(directory)
    assert sorted(os.listdir(directory + ".corrupted")) == ["20", "30"]
    assert _resume(directory) is None  # the rerun trains from step 0

    # A step killed between its finalise and its digest: restored unverified, digested later.
    _saved_steps(directory, steps=(40,))
    os.remove(os.path.join(directory, "40", checkpoint.DIGEST_FILE))
    with caplog.at_level(logging.INFO):
        ckpt = checkpoint.Checkpointer(directory, save_every=10)
        assert ckpt.restore(checkpoint.abstract_like(_state(0)))[1] == {"step": 40}
    assert any("step 40" in r.getMessage() and "unverified" in r.getMessage()
               for r in caplog.records)
    ckpt.save(50, _state(50), {"step": 50})
    ckpt.close()
    assert all(os.path.exists(os.path.join(directory, s, checkpoint.DIGEST_FILE))
               for s in ("40", "50"))


def _sae_run(workdir: str) -> str:
    """The sae_workdir fixture's run: the smoke default SAE, named after its variant."""
    return os.path.join(workdir, "sae", sae_default.get_config("smoke").variant)


def test_sae_training_resumes_from_the_previous_step(sae_workdir, copy_workdir, caplog):
    workdir = copy_workdir(sae_workdir)
    run = _sae_run(workdir)
    newest = os.path.join(run, "checkpoints", "40")
    _flip(_data_files(newest)[0])
    before = json.load(open(os.path.join(run, "summary.json")))
    os.remove(os.path.join(run, "summary.json"))
    with caplog.at_level(logging.WARNING):
        summary = sae_train.train_sae(sae_default.get_config("smoke"), workdir)
    lines = _corrupted_lines(caplog)
    assert len(lines) == 1 and "step 40" in lines[0], lines
    assert summary["resumed_from_step"] == 30
    assert os.listdir(os.path.join(run, "checkpoints.corrupted")) == ["40"]
    assert checkpoint.first_mismatch(newest) is None  # saved again, with its digest
    for key in ("mse", "explained_variance", "l0", "dead_fraction"):
        np.testing.assert_allclose(summary[key], before[key], rtol=1e-5, atol=1e-7)
    got = sae_artifact.load_run(run).params
    want = sae_artifact.load_run(_sae_run(sae_workdir)).params
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("stage", ["sae", "lm"])
def test_eval_of_a_corrupted_checkpoint_is_one_error_line(sae_workdir, copy_workdir, run_binary,
                                                          stage):
    workdir = copy_workdir(sae_workdir)
    run = _sae_run(workdir) if stage == "sae" else os.path.join(workdir, "lm")
    ckpts = os.path.join(run, "checkpoints")
    newest = os.path.join(ckpts, str(max(int(s) for s in os.listdir(ckpts))))
    for path in _data_files(newest):
        _flip(path, everything=True)
    proc = run_binary(eval_main.run_main, f"--workdir={workdir}", f"--config={EVAL_CONFIG}")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"checkpoint step {os.path.basename(newest)} of {run} is corrupted" in errors[0]
    assert f"delete {newest} and {os.path.join(run, 'summary.json')}" in errors[0]
    assert not os.path.exists(os.path.join(workdir, "eval"))


# --- the activation store -------------------------------------------------------------------

HOOK, D, SHARD = "h", 16, 64


def _write(root: str, rows: int = 300) -> tuple[store_lib.StoreSpec, np.ndarray]:
    spec = store_lib.StoreSpec(store_lib.kvstore_for(root), HOOK, D, "float32", SHARD)
    x_RD = np.random.default_rng(0).standard_normal((rows, D)).astype(np.float32)
    store_writer.write_array(spec, x_RD)
    return spec, x_RD


def test_store_chunks_carry_a_crc32c_and_a_flipped_byte_names_its_rows(tmp_path):
    root = str(tmp_path / "acts")
    _, x_RD = _write(root)
    for name in ("acts", *store_lib.META_FIELDS):
        with open(os.path.join(root, HOOK, name, "zarr.json")) as f:
            sharding = json.load(f)["codecs"][0]["configuration"]
        assert [c["name"] for c in sharding["codecs"]] == ["bytes", "crc32c"]
    _flip(os.path.join(root, HOOK, "acts", "c", "2", "0"))  # shard 2: rows [128, 192)
    _flip(os.path.join(root, HOOK, "doc_id", "c", "1"))  # shard 1: rows [64, 128)
    st = store_lib.open_store(store_lib.kvstore_for(root), HOOK)
    np.testing.assert_array_equal(st.read_rows(0, 128), x_RD[:128])  # other chunks still read
    fix = f"delete {os.path.join(root, HOOK)}/ and rerun monosem-capture to capture hook {HOOK}"
    with pytest.raises(StoreError, match=r"rows \[128, 192\) of acts fail their checksum") as e:
        st.read_rows(100, 300)
    assert fix in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(StoreError, match=r"rows \[64, 128\) of doc_id fail their checksum"):
        st.read_meta(0, 300)
    # The reader's prefetch thread hands the same error to the training loop.
    reader = reader_lib.ActivationReader(st, reader_lib.ReaderConfig(batch_size=32, seed=0))
    stream = reader.iterate(0)
    with pytest.raises(StoreError, match=r"rows \[128, 192\) of acts"):
        for _ in range(2 * reader.steps_per_epoch):  # an epoch reads every block
            next(stream)
    reader.close()


def _as_old_layout(root: str) -> None:
    """Rewrites every array of the store as written before inner chunks had a crc32c."""
    hook_dir = store_lib.hook_kvstore(store_lib.kvstore_for(root), HOOK)
    kvs = store_lib.open_kvstore(hook_dir)
    for name in ("acts", *store_lib.META_FIELDS):
        data = store_lib.open_array(hook_dir, name).read().result()
        metadata = store_lib.read_kv_json(kvs, f"{name}/zarr.json")
        metadata["codecs"][0]["configuration"]["codecs"] = [
            {"name": "bytes", "configuration": {"endian": "little"}}]
        kvs.delete_range(ts.KvStore.KeyRange(f"{name}/", f"{name}0")).result()
        spec = {"driver": "zarr3", "kvstore": store_lib.join(hook_dir, name + "/"),
                "metadata": metadata}
        array = ts.open(spec, create=True, context=store_lib.shared_context()).result()
        array.write(data).result()


def test_a_store_without_chunk_checksums_still_reads_and_resumes(tmp_path):
    clean_root, partial_root = str(tmp_path / "clean"), str(tmp_path / "partial")
    spec, x_RD = _write(clean_root)
    clean = store_lib.read_kv_json(store_lib.open_kvstore(
        store_lib.hook_kvstore(spec.kvstore, HOOK)), store_lib.COMPLETE_KEY)
    partial = store_lib.StoreSpec(store_lib.kvstore_for(partial_root), HOOK, D, "float32", SHARD)
    meta_R = np.full(len(x_RD), -1, np.int32)
    writer = store_writer.StoreWriter(partial, {})
    writer.append(x_RD[:150], meta_R[:150], meta_R[:150], meta_R[:150])
    writer.flush()  # a capture killed after 150 rows
    _as_old_layout(partial_root)
    resumed = store_writer.StoreWriter(partial, {})
    assert resumed.rows_committed == 150
    resumed.append(x_RD[150:], meta_R[150:], meta_R[150:], meta_R[150:])
    summary = resumed.finalize()
    assert summary["checksums"] == clean["checksums"] and summary["rows"] == len(x_RD)
    with open(os.path.join(partial_root, HOOK, "acts", "zarr.json")) as f:
        inner = json.load(f)["codecs"][0]["configuration"]["codecs"]
    assert [c["name"] for c in inner] == ["bytes"]  # kept as it was
    st = store_lib.open_store(partial)
    np.testing.assert_array_equal(st.read_rows(0, len(x_RD)), x_RD)
    np.testing.assert_array_equal(st.read_meta(0, len(x_RD))["doc_id"], meta_R)


def test_train_sae_on_a_corrupted_store_is_one_error_line(sae_workdir, copy_workdir, run_binary):
    workdir = copy_workdir(sae_workdir)
    hook = json.load(open(os.path.join(_sae_run(workdir), "config.json")))["hook"]
    shards = glob.glob(os.path.join(workdir, "acts", hook, "acts", "c", "*", "0"))
    assert shards
    for path in shards:  # whichever block the first batch reads fails
        _flip(path)
    proc = run_binary(sae_main.run_main, f"--workdir={workdir}", f"--config={SAE_CONFIG}",
                      "--config.name=fresh")
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "is corrupted: rows [" in errors[0] and "of acts fail their checksum" in errors[0]
    assert f"rerun monosem-capture to capture hook {hook}" in errors[0]
    assert not os.path.exists(os.path.join(workdir, "sae", "fresh", "summary.json"))
