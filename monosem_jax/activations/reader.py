"""Streaming shuffled batches from an activation store for SAE training.

Order. The train rows are [0, rows - eval_rows); they are cut into blocks of `rows_per_shard`
rows (the store's shards; the last block may be partial) and host h owns the blocks with
`block % num_hosts == h`. In epoch e the host's blocks are permuted (seeded by seed, e), grouped
into windows of `shuffle_blocks` consecutive permuted blocks, and each window's rows are permuted
(seeded by seed, e, window). The epoch's row order is the concatenation of the permuted windows;
batch i of the epoch is positions [i·B, (i+1)·B) of it, so a batch may straddle two windows and
the last < B positions (different rows each epoch) are dropped. Step s is batch s % S of epoch
s // S, with S = steps_per_epoch the same on every host (the smallest host's count), so
`batch_indices(step)` is a pure function of (seed, step). Seeds are numpy SeedSequences of
(seed, epoch, tag, window). `iterate` reads whole windows as contiguous shard reads in a
background thread, `prefetch` windows ahead, and slices batches from memory.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import queue
import threading
import weakref
from typing import Any, Iterator

import jax
import numpy as np

from monosem_jax import parallel
from monosem_jax.activations.store import Store

_TAG_BLOCKS, _TAG_WINDOW = 0x626C6B, 0x77696E  # keep the block and window streams independent
_PLAN_CACHE = 4


@dataclasses.dataclass(frozen=True)
class ReaderConfig:
    """How to shuffle, slice and prefetch training batches."""

    batch_size: int
    seed: int
    shuffle_blocks: int = 8
    prefetch: int = 2
    eval_rows: int = 0
    num_hosts: int = 1
    host_index: int = 0


@dataclasses.dataclass(frozen=True)
class _EpochPlan:
    windows: list[np.ndarray]  # block ids per window, in permuted order
    offsets: np.ndarray  # [n_windows + 1] epoch position where each window starts


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class BatchStream:
    """Iterator over a producer thread's queue; stops the thread when closed or dropped."""

    def __init__(self, q: queue.Queue, stop: threading.Event, thread: threading.Thread):
        self._q, self._stop, self._thread = q, stop, thread

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Any:
        while True:  # poll, so a close() from another thread or a dead producer can't hang us
            if self._stop.is_set():
                raise StopIteration
            try:
                item = self._q.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise StopIteration from None
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the producer thread and drop prefetched batches."""
        self._stop.set()
        while not self._q.empty():
            self._q.get_nowait()
        self._thread.join(timeout=5)

    def __del__(self):
        self._stop.set()


class ActivationReader:
    """Shuffled, shard-aligned, prefetched float32 batches of a store's train rows."""

    def __init__(self, store: Store, config: ReaderConfig, scale: bool = True):
        c = config
        if c.batch_size <= 0 or c.shuffle_blocks <= 0 or c.prefetch < 0 or c.seed < 0:
            raise ValueError(f"bad reader config {c}")
        if not 0 <= c.host_index < c.num_hosts:
            raise ValueError(f"host_index {c.host_index} not in [0, {c.num_hosts})")
        self.store, self.config = store, c
        self.scale = float(store.norm_scale) if scale else 1.0
        self.train_rows = store.rows - c.eval_rows
        if c.eval_rows < 0 or self.train_rows <= 0:
            raise ValueError(f"eval_rows={c.eval_rows} leaves no train rows of {store.rows}")
        self.block_rows = store.rows_per_shard
        n_blocks = -(-self.train_rows // self.block_rows)
        host_rows = [
            sum(self._block_size(b) for b in range(h, n_blocks, c.num_hosts))
            for h in range(c.num_hosts)
        ]
        self.steps_per_epoch = min(host_rows) // c.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {c.batch_size} > rows per host {min(host_rows)} of {store.name}"
            )
        self.host_blocks = np.arange(c.host_index, n_blocks, c.num_hosts)
        self._plans: collections.OrderedDict[int, _EpochPlan] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._streams: weakref.WeakSet[BatchStream] = weakref.WeakSet()

    def _block_size(self, block: int) -> int:
        return min(self.block_rows, self.train_rows - block * self.block_rows)

    def _plan(self, epoch: int) -> _EpochPlan:
        with self._lock:
            if epoch not in self._plans:
                rng = np.random.default_rng([self.config.seed, epoch, _TAG_BLOCKS, 0])
                order = self.host_blocks[rng.permutation(len(self.host_blocks))]
                k = self.config.shuffle_blocks
                windows = [order[i : i + k] for i in range(0, len(order), k)]
                sizes = [sum(self._block_size(int(b)) for b in w) for w in windows]
                self._plans[epoch] = _EpochPlan(windows, np.concatenate([[0], np.cumsum(sizes)]))
                while len(self._plans) > _PLAN_CACHE:
                    self._plans.popitem(last=False)
            return self._plans[epoch]

    def _window_perm(self, epoch: int, window: int, n: int) -> np.ndarray:
        return np.random.default_rng([self.config.seed, epoch, _TAG_WINDOW, window]).permutation(n)

    def _window_rows(self, blocks: np.ndarray) -> np.ndarray:
        starts = [int(b) * self.block_rows for b in blocks]
        return np.concatenate(
            [
                np.arange(s, s + self._block_size(int(b)))
                for s, b in zip(starts, blocks, strict=True)
            ]
        )

    def batch_indices(self, step: int) -> np.ndarray:
        """Store row indices (int64 [B]) of batch `step`: a pure function of (seed, step)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        lo, hi = i * self.config.batch_size, (i + 1) * self.config.batch_size
        plan = self._plan(epoch)
        w = int(np.searchsorted(plan.offsets, lo, side="right")) - 1
        parts = []
        while plan.offsets[w] < hi:
            start, size = int(plan.offsets[w]), int(plan.offsets[w + 1] - plan.offsets[w])
            rows = self._window_rows(plan.windows[w])[self._window_perm(epoch, w, size)]
            parts.append(rows[max(lo, start) - start : min(hi, start + size) - start])
            w += 1
        return np.concatenate(parts)

    def _jobs(self, start_step: int) -> Iterator[tuple[int, int, int, int]]:
        """(epoch, window, first, stop): the window positions [first, stop) that batches use."""
        epoch, i = divmod(start_step, self.steps_per_epoch)
        pos, used = i * self.config.batch_size, self.steps_per_epoch * self.config.batch_size
        while True:
            offsets = self._plan(epoch).offsets
            w = int(np.searchsorted(offsets, pos, side="right")) - 1
            while offsets[w] < used:
                yield (
                    epoch,
                    w,
                    pos - int(offsets[w]),
                    min(int(offsets[w + 1]), used) - int(offsets[w]),
                )
                w, pos = w + 1, int(offsets[w + 1])
            epoch, pos = epoch + 1, 0

    def _start_reads(self, epoch: int, window: int) -> list:
        blocks = self._plan(epoch).windows[window]
        starts = [int(b) * self.block_rows for b in blocks]
        return [
            self.store.read_rows_async(s, s + self._block_size(int(b)))
            for s, b in zip(starts, blocks, strict=True)
        ]

    def _assemble(self, epoch: int, window: int, futures: list) -> np.ndarray:
        """The window's rows in permuted order, scaled: scatter each block to its positions."""
        sizes = [self._block_size(int(b)) for b in self._plan(epoch).windows[window]]
        n = sum(sizes)
        inverse = np.empty(n, np.int64)
        inverse[self._window_perm(epoch, window, n)] = np.arange(n)
        out_ND = np.empty((n, self.store.d), np.float32)
        offset = 0
        for size, future in zip(sizes, futures, strict=True):
            block_ND = future.result()
            if self.scale != 1.0:
                np.multiply(block_ND, np.float32(self.scale), out=block_ND)
            out_ND[inverse[offset : offset + size]] = block_ND
            offset += size
        return out_ND

    def _produce(self, start_step: int, q: queue.Queue, stop: threading.Event, transfer) -> None:
        try:
            jobs, inflight = self._jobs(start_step), collections.deque()
            carry: list[np.ndarray] = []
            have, batch = 0, self.config.batch_size
            while not stop.is_set():
                while len(inflight) <= self.config.prefetch:
                    epoch, w, first, last = next(jobs)
                    inflight.append((epoch, w, first, last, self._start_reads(epoch, w)))
                epoch, w, first, last, futures = inflight.popleft()
                rows_ND = self._assemble(epoch, w, futures)[first:last]
                while len(rows_ND):
                    take = rows_ND[: batch - have]
                    carry.append(take)
                    have, rows_ND = have + len(take), rows_ND[len(take) :]
                    if have == batch:
                        out = carry[0] if len(carry) == 1 else np.concatenate(carry)
                        carry, have = [], 0
                        if not _put(q, transfer(out), stop):
                            return
        except BaseException as error:  # surfaced to the consumer, which re-raises it
            _put(q, _Failure(error), stop)

    def iterate(
        self, start_step: int = 0, *, device_put: bool = False, sharding: Any = None
    ) -> BatchStream:
        """Batches `start_step`, `start_step + 1`, ... forever: float32 [B, d] numpy or jax arrays.

        device_put=True moves each batch to the devices in the background thread, so the
        host-to-device copy overlaps training: as a global array laid out by `sharding` (every
        process reads the whole batch and copies its own devices' rows: parallel.place), or to
        the default device.
        """
        if not device_put:
            transfer = lambda x: x  # noqa: E731
        elif sharding is None:
            transfer = jax.device_put
        else:
            transfer = functools.partial(parallel.place, sharding=sharding)
        window_rows = self.config.shuffle_blocks * self.block_rows
        q: queue.Queue = queue.Queue(maxsize=max(2, -(-window_rows // self.config.batch_size)))
        stop = threading.Event()
        thread = threading.Thread(
            target=self._produce, args=(start_step, q, stop, transfer), daemon=True
        )
        thread.start()
        stream = BatchStream(q, stop, thread)
        self._streams.add(stream)
        return stream

    def eval_rows_array(self) -> np.ndarray:
        """The held-out last eval_rows rows, float32 [eval_rows, d], scaled like train batches."""
        rows_ND = self.store.read_rows(self.train_rows, self.store.rows)
        return rows_ND * np.float32(self.scale) if self.scale != 1.0 else rows_ND

    def close(self) -> None:
        """Stop every producer thread this reader started."""
        for stream in list(self._streams):
            stream.close()
