"""Activation store layout and read side: captured activations as TensorStore zarr3 arrays, one
directory per hook. The writing side (StoreWriter, `complete`, `write_array`) is store_writer.py.

Layout. A store root is a TensorStore kvstore spec (`file`, `memory`, `gcs`, `s3`, ... chosen by
configuration only). Each hook (e.g. `blocks.2.hook_resid_post`) lives under `<root>/<hook>/`:
`acts` is a zarr3 array `[rows, d]` (float32 or bfloat16, `dimension_names=["row", "d"]`) whose
chunks are shards of `[rows_per_shard, d]` rows written with the `sharding_indexed` codec (inner
chunks `[inner_rows, d]` of ~1 MB, `bytes` codec, no compression: zstd-1 measured 7% smaller for
float32, 22% for bfloat16, at 30-55% more writer CPU); `token_id`, `doc_id`, `position` are int32
arrays `[rows]` sharded on the same row boundaries. The `acts` zarr.json attributes hold the
caller's attributes (lm step, tokenizer hash, full capture config, ...) plus `hook`, `d`, `dtype`,
`rows_per_shard` and, once finalized, `rows` and `norm_scale` (c with E‖c·x‖₂ = √d, from the
float32 rows before any bfloat16 cast); a finalized store's arrays hold exactly `rows` rows.
`<root>/<hook>/progress` is a JSON key holding the committed `rows`, the running `norm_sum` and
checksums. Several processes write one store as segments of whole shards (segments.py): each
writer's record is `progress.<start>` (`progress` for start 0), merged into `progress` when the
store is completed. `<root>/<hook>/COMPLETE` (JSON: rows, d, dtype, bytes, norm_scale, checksums)
is written last, by one process; a store without it is never read as complete. Checksums are, per
array, Σ_r (r+1)·(Σ of row r's stored element bit patterns as unsigned ints) mod 2^64, as hex.
Every inner chunk (of `acts` and of the int32 arrays) also carries a `crc32c` codec, checked by
TensorStore on each read: a corrupted chunk is a StoreError naming the rows, never wrong values
(the shard index has had its own crc32c from the start; stores written before the inner chunks
had one are read as they are, unchecked).

This module holds the layout (StoreSpec, kvstore paths, the key/array helpers both sides use) and
the read side (`open_store`, `Store`, `is_complete`, `read_segments`). All TensorStore handles
share one process-wide `ts.Context` (`shared_context()`), so a `memory` store written by a
StoreWriter is readable by `open_store` in the same process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import numpy as np
import tensorstore as ts

from monosem_jax.activations import segments
from monosem_jax.errors import StoreError

META_FIELDS = ("token_id", "doc_id", "position")
DTYPES = ("float32", "bfloat16")
COMPLETE_KEY = "COMPLETE"
PROGRESS_KEY = segments.key(0)
_INNER_CHUNK_BYTES = 1 << 20
# One TensorStore worker for copies and few file threads: JAX needs the 2 cores (measured:
# higher limits don't speed the writer up; see BUILD.md). cache_pool 0: streaming, never re-read.
_CONTEXT = ts.Context(
    {
        "data_copy_concurrency": {"limit": 1},
        "file_io_concurrency": {"limit": 4},
        "cache_pool": {"total_bytes_limit": 0},
    }
)


def shared_context() -> ts.Context:
    """The process-wide TensorStore context every store handle uses (memory kvstores live in it)."""
    return _CONTEXT


def kvstore_for(path_or_spec: str | os.PathLike | dict) -> dict:
    """Turn a path (or a kvstore URL such as gs://b/p, memory://p) into a kvstore spec dict."""
    if isinstance(path_or_spec, dict):
        return dict(path_or_spec)
    text = os.fspath(path_or_spec)
    if "://" in text:
        return ts.KvStore.Spec(text).to_json()
    return {"driver": "file", "path": os.path.abspath(text)}


def join(kvstore: dict, subpath: str) -> dict:
    """The kvstore spec `kvstore` with `subpath` appended to its path."""
    base = kvstore.get("path", "")
    sub = subpath.lstrip("/")
    return {**kvstore, "path": f"{base.rstrip('/')}/{sub}" if base else sub}


def hook_kvstore(root: Any, hook: str) -> dict:
    if not hook or "/" in hook:
        raise ValueError(f"hook name {hook!r} must be a non-empty name without '/'")
    return join(kvstore_for(root), hook + "/")


def describe(kvstore: dict) -> str:
    try:
        return ts.KvStore.Spec(kvstore).url
    except (ValueError, TypeError):
        return json.dumps(kvstore, sort_keys=True)


def np_dtype(dtype: str) -> np.dtype:
    return ts.bfloat16.numpy_dtype if dtype == "bfloat16" else np.dtype(dtype)


def inner_chunk_rows(rows_per_shard: int, row_bytes: int) -> int:
    """Largest divisor of rows_per_shard (zarr needs one) giving inner chunks of at most ~1 MB."""
    rows = max(1, min(rows_per_shard, _INNER_CHUNK_BYTES // row_bytes))
    while rows_per_shard % rows:
        rows -= 1
    return rows


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """Where a hook's store lives and its fixed shape/dtype/sharding."""

    kvstore: dict
    hook: str
    d: int
    dtype: str
    rows_per_shard: int

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.d <= 0 or self.rows_per_shard <= 0:
            raise ValueError(f"d and rows_per_shard must be positive: {self}")
        hook_kvstore(self.kvstore, self.hook)

    @property
    def inner_rows(self) -> int:
        """Rows per ~1 MB inner chunk of `acts`."""
        return inner_chunk_rows(self.rows_per_shard, self.d * np_dtype(self.dtype).itemsize)


def open_kvstore(kvstore: dict) -> ts.KvStore:
    return ts.KvStore.open(kvstore, context=_CONTEXT).result()


def read_kv_json(kvs: ts.KvStore, key: str) -> dict | None:
    result = kvs.read(key).result()
    return json.loads(result.value) if result.state == "value" else None


def open_array(hook_dir: dict, name: str) -> ts.TensorStore:
    spec = {"driver": "zarr3", "kvstore": join(hook_dir, name + "/")}
    return ts.open(spec, open=True, context=_CONTEXT).result()


def read_segments(root: Any, hook: str) -> list[segments.Segment]:
    """Every progress record of a hook's store (segments.py), in no particular order."""
    kvs = open_kvstore(hook_kvstore(root, hook))
    keys = kvs.list(ts.KvStore.KeyRange(segments.PREFIX, segments.PREFIX + "/")).result()
    starts = [s for s in (segments.start_of(k.decode()) for k in keys) if s is not None]
    records = {s: read_kv_json(kvs, segments.key(s)) for s in starts}
    return [segments.Segment.from_record(s, r) for s, r in records.items() if r is not None]


class Store:
    """Read side of one hook's store: rows, metadata and the attributes written at capture."""

    def __init__(self, hook_dir: dict, attributes: dict, rows: int, scale: float, complete: bool):
        self.name, self.attributes, self.rows = describe(hook_dir), attributes, rows
        self.norm_scale, self.complete = scale, complete
        self.hook, self.d, self.dtype = attributes["hook"], attributes["d"], attributes["dtype"]
        self.rows_per_shard = attributes["rows_per_shard"]
        self._location = hook_dir["path"] if hook_dir.get("driver") == "file" else self.name
        self._arrays = {n: open_array(hook_dir, n) for n in ("acts", *META_FIELDS)}
        acts = self._arrays["acts"]
        self._acts = acts if self.dtype == "float32" else ts.cast(acts, ts.float32)

    def _check(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.rows:
            raise IndexError(f"rows [{start}, {stop}) outside {self.name} ({self.rows} rows)")

    def read_rows_async(self, start: int, stop: int) -> PendingRead:
        """Pending float32 [stop - start, d] rows, unscaled (`.result()` waits for them)."""
        self._check(start, stop)
        return PendingRead(self, "acts", self._acts[start:stop].read(), start, stop)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Float32 [stop - start, d] rows, unscaled."""
        return self.read_rows_async(start, stop).result()

    def read_meta(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """int32 token_id, doc_id, position of rows [start, stop)."""
        self._check(start, stop)
        pending = {n: PendingRead(self, n, self._arrays[n][start:stop].read(), start, stop)
                   for n in META_FIELDS}
        return {n: p.result() for n, p in pending.items()}

    def corrupted(self, name: str, start: int, stop: int) -> StoreError:
        """The error for a read of rows [start, stop) of array `name` that failed its checksum:
        names the first inner chunk that fails (re-read chunk by chunk) and the fix."""
        array = self._arrays[name]
        chunk = int(array.chunk_layout.read_chunk.shape[0])
        bad = (start, stop)
        for lo in range(start - start % chunk, stop, chunk):
            try:
                array[max(lo, start) : min(lo + chunk, stop)].read().result()
            except ValueError:
                bad = (lo, min(lo + chunk, self.rows))
                break
        return StoreError(
            f"activation store {self.name} is corrupted: rows [{bad[0]}, {bad[1]}) of {name} "
            f"fail their checksum; delete {self._location} and rerun monosem-capture to capture "
            f"hook {self.hook} again")


class PendingRead:
    """A read of rows [start, stop) of one array under way; `result()` raises a StoreError
    naming the rows when a chunk fails its checksum (TensorStore's DATA_LOSS)."""

    def __init__(self, store: Store, name: str, future: ts.Future, start: int, stop: int):
        self._store, self._name, self._future = store, name, future
        self._start, self._stop = start, stop

    def result(self) -> np.ndarray:
        try:
            return self._future.result()
        except ValueError as e:
            if "DATA_LOSS" not in str(e):
                raise
            raise self._store.corrupted(self._name, self._start, self._stop) from e


def open_store(
    spec_or_root: StoreSpec | str | os.PathLike | dict,
    hook: str | None = None,
    *,
    expect_d: int | None = None,
    expect_dtype: str | None = None,
    require_complete: bool = True,
) -> Store:
    """Open a hook's store for reading, checking completeness and the expected d/dtype/hook."""
    if isinstance(spec_or_root, StoreSpec):
        root, hook = spec_or_root.kvstore, hook or spec_or_root.hook
        expect_d = spec_or_root.d if expect_d is None else expect_d
        expect_dtype = expect_dtype or spec_or_root.dtype
    else:
        root = spec_or_root
    if hook is None:
        raise ValueError("open_store needs a hook name")
    hook_dir = hook_kvstore(root, hook)
    name, kvs = describe(hook_dir), open_kvstore(hook_dir)
    metadata = read_kv_json(kvs, "acts/zarr.json")
    if metadata is None:
        raise StoreError(f"no activation store at {name}: run capture for hook {hook!r} first")
    attributes = metadata.get("attributes", {})
    complete = read_kv_json(kvs, COMPLETE_KEY)
    if complete is None and require_complete:
        rows = (read_kv_json(kvs, PROGRESS_KEY) or {}).get("rows", 0)
        raise StoreError(
            f"activation store {name} is incomplete ({rows} rows committed); "
            "rerun capture to resume it"
        )
    for key, want in (("hook", hook), ("d", expect_d), ("dtype", expect_dtype)):
        if want is not None and attributes.get(key) != want:
            raise StoreError(
                f"activation store {name} has {key}={attributes.get(key)!r}, expected {want!r}; "
                "point at the right store or recapture"
            )
    if complete is not None:
        return Store(hook_dir, attributes, complete["rows"], complete["norm_scale"], True)
    progress = read_kv_json(kvs, PROGRESS_KEY) or {}
    rows, norm_sum = progress.get("rows", 0), progress.get("norm_sum", 0.0)
    norm_scale = math.sqrt(attributes["d"]) * rows / norm_sum if norm_sum > 0 else 1.0
    return Store(hook_dir, attributes, rows, norm_scale, False)


def is_complete(root: str | os.PathLike | dict, hook: str) -> bool:
    """Whether `<root>/<hook>/COMPLETE` exists (the capture finished)."""
    return read_kv_json(open_kvstore(hook_kvstore(root, hook)), COMPLETE_KEY) is not None
