"""Writing an activation store (layout: store.py): StoreWriter, `complete`, `write_array`.

Arrays grow geometrically by `resize(expand_only=True)` and are shrunk to exactly `rows` at
finalize. Writes are whole shards (a tail shard is partial) issued asynchronously with a bounded
number in flight. A writer's progress record (`progress`, or `progress.<start>` for a segment
starting at row `start`, segments.py) holds the committed `rows`, the running `norm_sum` and
checksums; it is rewritten only after every data write for those rows has resolved, so a killed
capture resumes at `rows` and simply overwrites anything written beyond it. Several processes write
one store as segments of whole shards, and `complete` merges them once every process's writes
resolved; the arrays are then sized up front (`reserve`), since concurrent resizes from several
processes would race on zarr.json. `complete` adds `rows`/`norm_scale` to the `acts` attributes and
writes `COMPLETE` last, by one process.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from typing import Any

import numpy as np
import tensorstore as ts

from monosem_jax.activations import segments
from monosem_jax.activations.store import (
    COMPLETE_KEY,
    META_FIELDS,
    PROGRESS_KEY,
    Store,
    StoreSpec,
    describe,
    hook_kvstore,
    inner_chunk_rows,
    join,
    np_dtype,
    open_array,
    open_kvstore,
    open_store,
    read_kv_json,
    read_segments,
    shared_context,
)
from monosem_jax.errors import StoreError

_U64 = 1 << 64


def _write_json(kvs: ts.KvStore, key: str, obj: dict) -> ts.Future:
    return kvs.write(key, json.dumps(obj, sort_keys=True).encode())


def _array_metadata(spec: StoreSpec, name: str, attributes: dict) -> dict:
    is_acts = name == "acts"
    tail = [spec.d] if is_acts else []
    inner = spec.inner_rows if is_acts else inner_chunk_rows(spec.rows_per_shard, 4)
    little = {"name": "bytes", "configuration": {"endian": "little"}}
    sharding = {
        "chunk_shape": [inner, *tail],
        # A CRC32C per inner chunk: a flipped bit is a read error, not a silently wrong row
        # (stores written before this lack it and are read as they are).
        "codecs": [little, {"name": "crc32c"}],
        "index_codecs": [little, {"name": "crc32c"}],
        "index_location": "end",
    }
    metadata = {
        "shape": [0, *tail],
        "data_type": spec.dtype if is_acts else "int32",
        "chunk_grid": {
            "name": "regular",
            "configuration": {"chunk_shape": [spec.rows_per_shard, *tail]},
        },
        "codecs": [{"name": "sharding_indexed", "configuration": sharding}],
        "dimension_names": ["row", "d"] if is_acts else ["row"],
    }
    if is_acts:
        metadata["attributes"] = attributes
    return metadata


def _weighted_bitsum(arr: np.ndarray, start: int) -> int:
    """Σ_r (start+r+1)·(Σ of row r's element bits as unsigned) mod 2^64: detects lost/moved rows."""
    bits = arr.view(np.uint16 if arr.dtype.itemsize == 2 else np.uint32)
    rowsum = bits.reshape(len(arr), -1).sum(axis=1, dtype=np.uint64)
    weights = np.arange(start + 1, start + len(arr) + 1, dtype=np.uint64)
    return int(np.dot(rowsum, weights))  # uint64 arithmetic wraps mod 2^64 by design


@dataclasses.dataclass
class _Block:
    stop: int
    futures: list
    norm_sum: float
    checksums: dict


class StoreWriter:
    """Appends activation rows asynchronously in shard-aligned blocks; resumable after a kill.

    `segment_start` (a shard boundary) picks the segment this writer appends to: it resumes from
    that segment's record, or starts it empty at that row (segments.py).
    """

    def __init__(
        self,
        spec: StoreSpec,
        attributes: dict,
        max_in_flight: int = 4,
        *,
        overwrite: bool = False,
        segment_start: int = 0,
    ):
        if segment_start < 0 or segment_start % spec.rows_per_shard:
            raise ValueError(f"segment_start {segment_start} is not a shard boundary of {spec}")
        self.spec, self.max_in_flight = spec, max_in_flight
        self._progress_key = segments.key(segment_start)
        self._dir = hook_kvstore(spec.kvstore, spec.hook)
        self._name = describe(self._dir)
        self._kvs = open_kvstore(self._dir)
        if overwrite:  # COMPLETE goes first: a crash mid-delete must not leave a "complete" store
            self._kvs.delete_range(ts.KvStore.KeyRange(COMPLETE_KEY, COMPLETE_KEY + "\0")).result()
            self._kvs.delete_range(ts.KvStore.KeyRange()).result()
        elif read_kv_json(self._kvs, COMPLETE_KEY) is not None:
            raise StoreError(
                f"activation store {self._name} is complete; refusing to overwrite it "
                "(pass overwrite=True or choose another root)"
            )
        own = dict(hook=spec.hook, d=spec.d, dtype=spec.dtype, rows_per_shard=spec.rows_per_shard)
        clash = {k for k in own if k in attributes and attributes[k] != own[k]}
        if clash:
            raise ValueError(f"attributes {sorted(clash)} conflict with the StoreSpec {spec}")
        self.attributes = json.loads(json.dumps({**attributes, **own}))  # as stored
        self._arrays = {n: self._open_or_create(n) for n in ("acts", *META_FIELDS)}
        progress = read_kv_json(self._kvs, self._progress_key) or {}
        self._committed = self._done_rows = self._next_row = int(
            progress.get("rows", segment_start)
        )
        self._norm_sum = float(progress.get("norm_sum", 0.0))
        self._checksums = {k: int(v, 16) for k, v in progress.get("checksums", {}).items()}
        self._pieces: collections.deque = collections.deque()
        self._buffered = 0
        self._pending: collections.deque[_Block] = collections.deque()
        self._progress_future: tuple[int, ts.Future] | None = None
        self._finalized = False

    def _open_or_create(self, name: str) -> ts.TensorStore:
        want = _array_metadata(self.spec, name, self.attributes)
        have = read_kv_json(self._kvs, f"{name}/zarr.json")
        if have is None:
            spec = {"driver": "zarr3", "kvstore": join(self._dir, name + "/"), "metadata": want}
            return ts.open(spec, create=True, context=shared_context()).result()
        got_grid = have["chunk_grid"]["configuration"]["chunk_shape"]
        want_grid = want["chunk_grid"]["configuration"]["chunk_shape"]
        if have["data_type"] != want["data_type"] or got_grid != want_grid:
            raise StoreError(
                f"existing store {self._name} has {name} dtype={have['data_type']} "
                f"shard={got_grid}, asked dtype={want['data_type']} shard={want_grid}; "
                "pass overwrite=True or choose another root"
            )
        old, new = have.get("attributes", {}), self.attributes
        diff = sorted(
            k
            for k in (old.keys() | new.keys()) - {"rows", "norm_scale"}
            if old.get(k) != new.get(k)
        )
        if name == "acts" and diff:
            raise StoreError(
                f"cannot resume {self._name}: its attributes differ in {diff}; "
                "pass overwrite=True to restart the capture"
            )
        return open_array(self._dir, name)

    @property
    def rows_committed(self) -> int:
        """Rows whose data and progress record are durably written (where a resume would start)."""
        self._poll_progress()
        return self._committed

    @property
    def rows_written(self) -> int:
        """Rows appended so far (committed, in flight or still buffered)."""
        return self._next_row + self._buffered

    def append(self, acts_RD: Any, token_id_R: Any, doc_id_R: Any, position_R: Any) -> None:
        """Buffer rows; write each completed shard asynchronously. Don't mutate the inputs after."""
        if self._finalized:
            raise StoreError(f"store {self._name} is finalized; open a new StoreWriter to add rows")
        acts_RD = np.asarray(acts_RD, dtype=np.float32)
        if acts_RD.ndim != 2 or acts_RD.shape[1] != self.spec.d:
            raise ValueError(f"acts must be [rows, {self.spec.d}], got {acts_RD.shape}")
        metas = [np.asarray(m, dtype=np.int32) for m in (token_id_R, doc_id_R, position_R)]
        if any(m.shape != acts_RD.shape[:1] for m in metas):
            raise ValueError(f"metadata shapes {[m.shape for m in metas]} != ({len(acts_RD)},)")
        if not len(acts_RD):
            return
        if not np.isfinite(acts_RD).all():  # NaN/inf would poison norm_scale and every reader
            raise StoreError(
                f"non-finite activations (NaN or inf) appended to {self._name} at row "
                f"{self.rows_written}; the model or its checkpoint is broken"
            )
        self._pieces.append((acts_RD, *metas))
        self._buffered += len(acts_RD)
        shard = self.spec.rows_per_shard
        while self._buffered >= (need := shard - self._next_row % shard):
            self._submit(self._take(need))
        while self._pending and all(f.done() for f in self._pending[0].futures):
            self._retire(self._pending.popleft())

    def _take(self, n: int) -> list[np.ndarray]:
        parts = []
        while n:
            piece = self._pieces[0]
            k = min(n, len(piece[0]))
            parts.append([a[:k] for a in piece])
            if k == len(piece[0]):
                self._pieces.popleft()
            else:
                self._pieces[0] = tuple(a[k:] for a in piece)
            n -= k
        self._buffered -= sum(len(p[0]) for p in parts)
        return (
            parts[0] if len(parts) == 1 else [np.concatenate(c) for c in zip(*parts, strict=True)]
        )

    def _submit(self, block: list[np.ndarray]) -> None:
        acts_RD, *metas = block
        start, stop = self._next_row, self._next_row + len(acts_RD)
        stored = acts_RD.astype(np_dtype(self.spec.dtype), copy=False)
        norms = np.sqrt(np.einsum("rd,rd->r", acts_RD, acts_RD))
        columns = dict(zip(self._arrays, [stored, *metas], strict=True))
        checks = {n: _weighted_bitsum(a, start) for n, a in columns.items()}
        self._ensure_capacity(stop)
        futures = [self._arrays[n][start:stop].write(a) for n, a in columns.items()]
        self._pending.append(_Block(stop, futures, float(norms.sum(dtype=np.float64)), checks))
        self._next_row = stop
        while len(self._pending) > self.max_in_flight:
            self._retire(self._pending.popleft())

    def _ensure_capacity(self, stop: int) -> None:
        # Geometric growth keeps resizes (a metadata read-modify-write each) O(log rows).
        shard = self.spec.rows_per_shard
        grow = {n: a for n, a in self._arrays.items() if a.shape[0] < stop}
        futures = {}
        for name, arr in grow.items():
            target = -(-max(stop, 2 * arr.shape[0]) // shard) * shard
            futures[name] = arr.resize(exclusive_max=[target, None][: arr.rank], expand_only=True)
        self._arrays.update({n: f.result() for n, f in futures.items()})

    def reserve(self, rows: int) -> None:
        """Grows the arrays to hold `rows` rows now, so no later write needs a resize (several
        processes resizing one array would race on its zarr.json)."""
        shard = self.spec.rows_per_shard
        target = -(-rows // shard) * shard
        futures = {
            n: a.resize(exclusive_max=[target, None][: a.rank], expand_only=True)
            for n, a in self._arrays.items()
            if a.shape[0] < target
        }
        self._arrays.update({n: f.result() for n, f in futures.items()})

    def _retire(self, block: _Block) -> None:
        for future in block.futures:
            future.result()
        self._done_rows = block.stop
        self._norm_sum += block.norm_sum
        for name, value in block.checksums.items():
            self._checksums[name] = (self._checksums.get(name, 0) + value) % _U64
        self._poll_progress()
        if self._progress_future is None:  # one progress write in flight keeps them ordered
            future = _write_json(self._kvs, self._progress_key, self._progress())
            self._progress_future = (self._done_rows, future)

    def _progress(self) -> dict:
        hexed = {k: f"{v:016x}" for k, v in self._checksums.items()}
        return {"rows": self._done_rows, "norm_sum": self._norm_sum, "checksums": hexed}

    def _poll_progress(self, wait: bool = False) -> None:
        if self._progress_future and (wait or self._progress_future[1].done()):
            rows, future = self._progress_future
            future.result()
            self._committed, self._progress_future = rows, None

    def flush(self) -> None:
        """Write the buffered tail (a partial shard), wait for all writes, commit the row count."""
        if self._buffered:
            self._submit(self._take(self._buffered))
        while self._pending:
            self._retire(self._pending.popleft())
        self._poll_progress(wait=True)
        if self._committed != self._done_rows:
            _write_json(self._kvs, self._progress_key, self._progress()).result()
            self._committed = self._done_rows

    def finalize(self, expect_rows: int | None = None) -> dict:
        """Flush, then `complete` the store (every segment's rows, COMPLETE last)."""
        self.flush()
        summary = complete(self.spec, expect_rows)
        self._finalized = True
        return summary


def complete(spec: StoreSpec, expect_rows: int | None = None) -> dict:
    """Merges the segments (all rows present, each once), shrinks the arrays to `rows`, adds
    rows/norm_scale to the attributes, then writes COMPLETE last. Call it from one process, after
    every writer's flush resolved."""
    hook_dir = hook_kvstore(spec.kvstore, spec.hook)
    name, kvs = describe(hook_dir), open_kvstore(hook_dir)
    found = read_segments(spec.kvstore, spec.hook)
    try:
        merged = segments.merge(found, expect_rows)
    except StoreError as e:
        raise StoreError(f"store {name}: {e}") from None
    rows, d = merged.rows, spec.d
    if rows == 0 or merged.norm_sum <= 0:
        raise StoreError(f"store {name} has no nonzero rows; nothing to finalize")
    if len(found) > 1:  # the merged record first: a kill before the clean-up drops nothing
        _write_json(kvs, PROGRESS_KEY, merged.record()).result()
        for seg in found:
            if seg.start:
                stale = segments.key(seg.start)
                kvs.delete_range(ts.KvStore.KeyRange(stale, stale + "\0")).result()
    norm_scale = math.sqrt(d) * rows / merged.norm_sum
    arrays = {n: open_array(hook_dir, n) for n in ("acts", *META_FIELDS)}
    futures = {n: a.resize(exclusive_max=[rows, None][: a.rank]) for n, a in arrays.items()}
    for future in futures.values():
        future.result()
    metadata = read_kv_json(kvs, "acts/zarr.json")
    metadata["attributes"].update(rows=rows, norm_scale=norm_scale)
    _write_json(kvs, "acts/zarr.json", metadata).result()
    row_bytes = d * np_dtype(spec.dtype).itemsize + 4 * len(META_FIELDS)
    summary = dict(merged.record(), hook=spec.hook, d=d, dtype=spec.dtype)
    summary.update(bytes=rows * row_bytes, norm_scale=norm_scale)
    _write_json(kvs, COMPLETE_KEY, summary).result()
    return summary


def write_array(spec: StoreSpec, acts_RD: np.ndarray, attributes: dict | None = None) -> Store:
    """Writes an in-memory array as a complete store (no token provenance: metadata are -1)."""
    writer = StoreWriter(spec, dict(attributes or {}))
    for start in range(0, acts_RD.shape[0], spec.rows_per_shard):
        block_RD = acts_RD[start : start + spec.rows_per_shard]
        unknown_R = np.full(block_RD.shape[0], -1, np.int32)
        writer.append(block_RD, unknown_R, unknown_R, unknown_R)
    writer.finalize()
    return open_store(spec.kvstore, spec.hook)
