"""Activation reader: seeded shard-window shuffling, epoch coverage, eval hold-out, streaming."""

import itertools

import jax
import numpy as np
import pytest

from monosem_jax.activations import store as S
from monosem_jax.activations import store_writer as W
from monosem_jax.activations.reader import ActivationReader, ReaderConfig

ROWS, D, SHARD, EVAL, BATCH = 1000, 8, 64, 100, 32  # 900 train rows: 14 full blocks + 4 rows


@pytest.fixture(scope="module")
def store() -> S.Store:
    root = {"driver": "memory", "path": "test_reader/"}
    spec = S.StoreSpec(root, "blocks.0.hook_resid_post", D, "float32", SHARD)
    writer = W.StoreWriter(spec, {"lm_step": 1}, overwrite=True)
    x_RD = np.random.default_rng(0).standard_normal((ROWS, D)).astype(np.float32)
    ids = np.arange(ROWS, dtype=np.int32)
    writer.append(x_RD, ids, ids, ids)
    writer.finalize()
    return S.open_store(spec)


def reader_for(store: S.Store, **overrides) -> ActivationReader:
    config = dict(batch_size=BATCH, seed=3, shuffle_blocks=3, prefetch=2, eval_rows=EVAL)
    return ActivationReader(store, ReaderConfig(**{**config, **overrides}))


def test_batch_indices_are_a_pure_function_of_seed_and_step(store):
    a, b, other = reader_for(store), reader_for(store), reader_for(store, seed=4)
    for step in [0, 5, 27, 28, 100]:
        np.testing.assert_array_equal(a.batch_indices(step), b.batch_indices(step))
        assert a.batch_indices(step).shape == (BATCH,)
    assert not np.array_equal(a.batch_indices(0), other.batch_indices(0))


def test_epoch_covers_train_rows_once_and_never_eval_rows(store):
    reader = reader_for(store)
    train = ROWS - EVAL
    assert reader.steps_per_epoch == train // BATCH
    epochs = []
    for e in range(2):
        steps = range(e * reader.steps_per_epoch, (e + 1) * reader.steps_per_epoch)
        seen = np.concatenate([reader.batch_indices(s) for s in steps])
        assert len(np.unique(seen)) == len(seen) == train - train % BATCH
        assert seen.min() >= 0 and seen.max() < train  # eval rows are the last EVAL rows
        epochs.append(seen)
    assert not np.array_equal(epochs[0], epochs[1])


def test_iterate_yields_scaled_rows_of_batch_indices(store):
    reader = reader_for(store)
    all_RD = store.read_rows(0, store.rows)
    stream = reader.iterate()
    for step, batch_BD in zip(range(reader.steps_per_epoch + 5), stream, strict=False):
        want_BD = all_RD[reader.batch_indices(step)] * np.float32(store.norm_scale)
        np.testing.assert_array_equal(batch_BD, want_BD)
    stream.close()
    reader.close()


def test_iterate_from_step_is_the_tail_of_iterate_from_zero(store):
    reader = reader_for(store)
    full = [b.copy() for b in itertools.islice(reader.iterate(0), 40)]
    for k in [1, 9, 27, 28, 33]:
        tail = list(itertools.islice(reader.iterate(k), 40 - k))
        for got, want in zip(tail, full[k:], strict=True):
            np.testing.assert_array_equal(got, want)
    reader.close()


def test_device_put_and_unscaled(store):
    reader = reader_for(store)
    plain = reader_for(store)
    raw = ActivationReader(store, plain.config, scale=False)
    stream = reader.iterate(3, device_put=True)
    batch = next(stream)
    assert isinstance(batch, jax.Array)
    np.testing.assert_array_equal(np.asarray(batch), next(plain.iterate(3)))
    np.testing.assert_array_equal(
        next(raw.iterate(3)), store.read_rows(0, ROWS)[raw.batch_indices(3)]
    )
    for r in (reader, plain, raw):
        r.close()


def test_eval_rows_array_is_the_scaled_tail(store):
    reader = reader_for(store)
    want_RD = store.read_rows(ROWS - EVAL, ROWS) * np.float32(store.norm_scale)
    np.testing.assert_array_equal(reader.eval_rows_array(), want_RD)


def test_host_slices_are_disjoint_and_cover_all_blocks(store):
    hosts = [reader_for(store, num_hosts=3, host_index=h) for h in range(3)]
    blocks = [set(r.host_blocks.tolist()) for r in hosts]
    assert set.union(*blocks) == set(range(15)) and sum(map(len, blocks)) == 15
    assert len({r.steps_per_epoch for r in hosts}) == 1  # hosts stay in lockstep
    rows = [
        set(np.concatenate([r.batch_indices(s) for s in range(r.steps_per_epoch)])) for r in hosts
    ]
    assert not (rows[0] & rows[1]) and not (rows[1] & rows[2]) and not (rows[0] & rows[2])
    for r, owned in zip(hosts, blocks, strict=True):
        assert {i // SHARD for i in np.concatenate([r.batch_indices(s) for s in range(5)])} <= owned


def test_config_errors(store):
    with pytest.raises(ValueError, match="batch_size"):
        reader_for(store, batch_size=10_000)
    with pytest.raises(ValueError, match="no train rows"):
        reader_for(store, eval_rows=ROWS)
