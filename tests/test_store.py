"""Activation store: round trips, norm_scale, resume after a crash, memory kvstore, errors."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from monosem_jax.activations import store as S
from monosem_jax.activations import store_writer as W

HOOK = "blocks.1.hook_resid_post"
D = 16
SHARD = 64


def rows_RD(start: int, stop: int, d: int = D) -> np.ndarray:
    """Deterministic, row-dependent float32 activations (so a moved or lost row is visible)."""
    r = np.arange(start, stop, dtype=np.float64)[:, None]
    return (np.sin(r * 0.37 + np.arange(d) * 1.3) * (1 + r % 5)).astype(np.float32)


def meta(start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = np.arange(start, stop, dtype=np.int32)
    return r * 7 % 50257, r // 100, r % 100


def spec_at(root, dtype: str = "float32", hook: str = HOOK, d: int = D) -> S.StoreSpec:
    return S.StoreSpec(S.kvstore_for(root), hook, d, dtype, SHARD)


def write(spec: S.StoreSpec, cuts: list[int], attributes: dict | None = None, **kw) -> dict:
    """Write rows [cuts[0], cuts[-1]) appending one piece per consecutive pair of cuts."""
    writer = W.StoreWriter(spec, attributes or {"lm_step": 3}, **kw)
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        writer.append(rows_RD(a, b, spec.d), *meta(a, b))
    return writer.finalize()


UNEVEN = [0, 5, 69, 70, 200, 333, 334, 517]  # appends that straddle shards of 64 rows


def test_kvstore_helpers():
    assert S.kvstore_for("/x/y") == {"driver": "file", "path": "/x/y"}
    assert S.kvstore_for({"driver": "memory"}) == {"driver": "memory"}
    assert S.kvstore_for("memory://a/b/") == {"driver": "memory", "path": "a/b/"}
    assert S.join({"driver": "file", "path": "/r/"}, "h/acts") == {
        "driver": "file",
        "path": "/r/h/acts",
    }
    assert S.join({"driver": "memory"}, "h") == {"driver": "memory", "path": "h"}
    assert S.inner_chunk_rows(16384, 128 * 4) == 2048
    assert S.inner_chunk_rows(3000, 4096 * 4) == 60  # largest divisor of 3000 within 1 MB


def test_float32_round_trip_and_attributes(tmp_path):
    spec = spec_at(tmp_path)
    summary = write(spec, UNEVEN, {"lm_step": 3, "capture": {"hooks": [HOOK]}})
    n = UNEVEN[-1]
    x_RD = rows_RD(0, n)
    store = S.open_store(tmp_path, HOOK, expect_d=D, expect_dtype="float32")
    assert (store.rows, store.d, store.dtype) == (n, D, "float32")
    np.testing.assert_array_equal(store.read_rows(0, n), x_RD)
    np.testing.assert_array_equal(store.read_rows(60, 131), x_RD[60:131])
    got = store.read_meta(0, n)
    for name, want in zip(S.META_FIELDS, meta(0, n), strict=True):
        np.testing.assert_array_equal(got[name], want)
    want_scale = math.sqrt(D) / np.linalg.norm(x_RD.astype(np.float64), axis=1).mean()
    assert store.norm_scale == pytest.approx(want_scale, rel=1e-6)
    assert summary["norm_scale"] == store.norm_scale and summary["rows"] == n
    assert store.attributes["lm_step"] == 3 and store.attributes["capture"] == {"hooks": [HOOK]}
    assert store.attributes["rows"] == n and store.attributes["norm_scale"] == store.norm_scale
    assert S.is_complete(tmp_path, HOOK)
    with open(tmp_path / HOOK / "acts" / "zarr.json") as f:
        zarr = json.load(f)
    assert zarr["shape"] == [n, D] and zarr["dimension_names"] == ["row", "d"]
    assert zarr["chunk_grid"]["configuration"]["chunk_shape"] == [SHARD, D]
    assert zarr["codecs"][0]["name"] == "sharding_indexed"
    with pytest.raises(IndexError):
        store.read_rows(0, n + 1)


def test_bfloat16_round_trip(tmp_path):
    spec = spec_at(tmp_path, "bfloat16")
    write(spec, UNEVEN)
    n = UNEVEN[-1]
    x_RD = rows_RD(0, n)
    store = S.open_store(spec)
    got_RD = store.read_rows(0, n)
    assert got_RD.dtype == np.float32 and store.dtype == "bfloat16"
    np.testing.assert_array_equal(got_RD, x_RD.astype(S.np_dtype("bfloat16")).astype(np.float32))
    # norm_scale comes from the float32 rows, before the bfloat16 cast
    want_scale = math.sqrt(D) / np.linalg.norm(x_RD.astype(np.float64), axis=1).mean()
    assert store.norm_scale == pytest.approx(want_scale, rel=1e-6)


def test_memory_kvstore_round_trip():
    root = {"driver": "memory", "path": "test_store/mem/"}
    write(spec_at(root), [0, 100, 300])
    store = S.open_store(root, HOOK)
    np.testing.assert_array_equal(store.read_rows(0, 300), rows_RD(0, 300))
    np.testing.assert_array_equal(store.read_meta(0, 300)["doc_id"], meta(0, 300)[1])


def test_resume_after_crash_matches_uninterrupted(tmp_path):
    n = 517
    clean = write(spec_at(tmp_path / "clean"), UNEVEN)
    spec = spec_at(tmp_path / "crash")
    writer = W.StoreWriter(spec, {"lm_step": 3})
    writer.append(rows_RD(0, 150), *meta(0, 150))
    writer.flush()
    assert writer.rows_committed == 150
    writer.append(rows_RD(150, 301), *meta(150, 301))  # two shards submitted, a tail buffered
    for block in writer._pending:  # let those writes land, committed or not
        for future in block.futures:
            future.result()
    del writer  # crash: no flush, no finalize
    assert not S.is_complete(spec.kvstore, HOOK)
    with pytest.raises(S.StoreError, match="incomplete"):
        S.open_store(spec)
    partial = S.open_store(spec, require_complete=False)
    committed = partial.rows
    assert 150 <= committed <= 301 and not partial.complete
    acts = S.open_array(S.hook_kvstore(spec.kvstore, HOOK), "acts")  # junk past the counter
    acts = acts.resize(exclusive_max=[max(acts.shape[0], committed + 100), None]).result()
    acts[committed : committed + 100].write(np.full((100, D), -7, np.float32)).result()
    writer = W.StoreWriter(spec, {"lm_step": 3})
    assert writer.rows_committed == committed
    for a, b in [(committed, committed + 1), (committed + 1, 400), (400, n)]:
        writer.append(rows_RD(a, b), *meta(a, b))
    resumed = writer.finalize()
    assert resumed["rows"] == clean["rows"] == n
    assert resumed["checksums"] == clean["checksums"]
    assert resumed["norm_scale"] == pytest.approx(clean["norm_scale"], rel=1e-12)
    np.testing.assert_array_equal(S.open_store(spec).read_rows(0, n), rows_RD(0, n))


_KILLED_WRITER = """
import sys
sys.path.insert(0, {tests!r})
from test_store import W, meta, rows_RD, spec_at
writer = W.StoreWriter(spec_at({root!r}), {{"lm_step": 3}}, max_in_flight=2)
a = 0
while True:
    writer.append(rows_RD(a, a + 37), *meta(a, a + 37))
    a += 37
    if a % 5 == 0:
        writer.flush()
        print(writer.rows_committed, flush=True)
"""


def test_sigkill_mid_write_then_resume(tmp_path):
    root = str(tmp_path / "killed")
    code = _KILLED_WRITER.format(tests=os.path.dirname(__file__), root=root)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE)
    try:
        seen = [int(proc.stdout.readline()) for _ in range(4)]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    writer = W.StoreWriter(spec_at(root), {"lm_step": 3})
    start = writer.rows_committed
    assert start >= seen[-1]
    n = start + 300
    writer.append(rows_RD(start, n), *meta(start, n))
    resumed = writer.finalize()
    clean = write(spec_at(tmp_path / "clean"), [0, 1000, n])
    assert resumed["checksums"] == clean["checksums"] and resumed["rows"] == n


def test_errors(tmp_path):
    with pytest.raises(S.StoreError, match="no activation store"):
        S.open_store(tmp_path, HOOK)
    spec = spec_at(tmp_path)
    write(spec, [0, 100])
    with pytest.raises(S.StoreError, match="d=16, expected 32"):
        S.open_store(tmp_path, HOOK, expect_d=32)
    with pytest.raises(S.StoreError, match="dtype='float32', expected 'bfloat16'"):
        S.open_store(tmp_path, HOOK, expect_dtype="bfloat16")
    with pytest.raises(S.StoreError, match="is complete; refusing to overwrite"):
        W.StoreWriter(spec, {"lm_step": 3})
    os.rename(tmp_path / HOOK, tmp_path / "blocks.9.hook_resid_post")
    with pytest.raises(S.StoreError, match="hook='blocks.1.hook_resid_post'"):
        S.open_store(tmp_path, "blocks.9.hook_resid_post")


def test_writer_mismatch_and_overwrite(tmp_path):
    spec = spec_at(tmp_path)
    writer = W.StoreWriter(spec, {"lm_step": 3})
    writer.append(rows_RD(0, 10), *meta(0, 10))
    writer.flush()
    with pytest.raises(S.StoreError, match="dtype=float32"):
        W.StoreWriter(spec_at(tmp_path, "bfloat16"), {"lm_step": 3})
    with pytest.raises(S.StoreError, match="attributes differ in \\['lm_step'\\]"):
        W.StoreWriter(spec, {"lm_step": 4})
    assert write(spec, [10, 100])["rows"] == 100  # resumes after the 10 committed rows
    summary = write(spec_at(tmp_path, d=8), [0, 50], overwrite=True)
    assert summary["rows"] == 50 and S.open_store(tmp_path, HOOK, expect_d=8).rows == 50


def test_segment_plan_merge_and_stale_records():
    from monosem_jax.activations.segments import Piece, Segment, live, merge, plan

    assert plan([[]], 1005, 100, 2) == [[Piece(0, 500, (0,))], [Piece(500, 1005, (500,))]]
    # A 2-process capture of two hooks killed mid-way: each process's segment, hooks apart.
    a = [Segment(0, 300), Segment(500, 800)]
    b = [Segment(0, 200), Segment(500, 900)]
    assert plan([a, b], 1005, 100, 2) == [
        [Piece(200, 400, (0, 0)), Piece(800, 1000, (500, 500))],
        [Piece(400, 500, (400, 400)), Piece(1000, 1005, (1000, 1000))],
    ]
    assert plan([a, b], 1005, 100, 1) == [[Piece(200, 500, (0, 0)), Piece(800, 1005, (500, 500))]]
    # Hook b's first segment runs past a's second start: b extends its own, from its own row.
    b = [Segment(0, 700)]
    assert plan([a, b], 1005, 100, 2) == [
        [Piece(300, 500, (0, 0)), Piece(700, 900, (500, 0))],
        [Piece(900, 1005, (900, 900))],
    ]
    # A record inside an earlier live segment (a finalize killed before its clean-up) is dropped.
    whole = Segment(0, 1005, 2.5, {"acts": 7})
    assert live([Segment(500, 800), whole]) == [whole]
    assert plan([[whole, Segment(500, 800)]], 1005, 100, 2) == [[], []]
    assert merge([whole, Segment(500, 800)], 1005) is whole
    parts = [Segment(0, 500, 1.0, {"acts": 2**64 - 1}), Segment(500, 1005, 1.5, {"acts": 8})]
    assert merge(parts, 1005) == whole
    with pytest.raises(S.StoreError, match=r"rows \[500, 600\) were never committed"):
        merge([Segment(0, 500), Segment(600, 1005)])
    with pytest.raises(S.StoreError, match="1005 rows committed, expected 2000"):
        merge(parts, 2000)


def test_segments_written_apart_merge_into_one_writers_store(tmp_path):
    n, cut = 517, 3 * SHARD
    clean = write(spec_at(tmp_path / "clean"), UNEVEN)
    spec = spec_at(tmp_path / "apart")
    first = W.StoreWriter(spec, {"lm_step": 3})
    first.reserve(n)  # as process 0 does before any process writes
    for start, stop in [(cut, n), (0, cut)]:  # the later segment may well finish first
        writer = W.StoreWriter(spec, {"lm_step": 3}, segment_start=start)
        writer.append(rows_RD(start, stop), *meta(start, stop))
        writer.flush()
    assert {s.start: s.rows for s in S.read_segments(spec.kvstore, HOOK)} == {0: cut, cut: n}
    assert not S.is_complete(spec.kvstore, HOOK)
    merged = W.complete(spec, expect_rows=n)
    assert merged["rows"] == clean["rows"] and merged["checksums"] == clean["checksums"]
    assert merged["norm_scale"] == pytest.approx(clean["norm_scale"], rel=1e-12)
    assert [s.start for s in S.read_segments(spec.kvstore, HOOK)] == [0]  # merged, cleaned up
    np.testing.assert_array_equal(S.open_store(spec).read_rows(0, n), rows_RD(0, n))
    with pytest.raises(ValueError, match="shard boundary"):
        W.StoreWriter(spec_at(tmp_path / "x"), {}, segment_start=SHARD + 1)
