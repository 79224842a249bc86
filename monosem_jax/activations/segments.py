"""Progress segments: how several processes, and several runs, fill one store's rows exactly once.

A hook's rows are written as segments: a segment is a run of whole shards [start, rows) appended
in order by one StoreWriter, whose progress record (`progress` for start 0, `progress.<start>`
otherwise, JSON: rows, norm_sum, checksums) is rewritten only after the data writes for those rows
resolved. A one-process capture is one segment, `progress`, as before multi-process capture; a
P-process capture starts P segments, one per process, on shard boundaries.

Records are never trusted blindly: a record that starts inside an earlier live segment (left by a
finalize killed between its merge and its clean-up, or by any overlap) is dropped and its rows are
rewritten, so live segments never overlap and nothing is counted twice. `merge` requires the live
segments to tile [0, rows) with no gap; `plan` splits the rows still missing (for any hook) into
pieces, one list per process, each piece extending a live segment or starting a new one.

Everything here is pure (records in, records or pieces out): store.py does the reading,
store_writer.py the writing, capture.py the computing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from monosem_jax.errors import StoreError

PREFIX = "progress"
_U64 = 1 << 64


def key(start: int) -> str:
    """The record key of the segment starting at row `start`."""
    return PREFIX if start == 0 else f"{PREFIX}.{start}"


def start_of(name: str) -> int | None:
    """The start row a record key names, or None for any other key (a lock or temporary file)."""
    if name == PREFIX:
        return 0
    head, _, tail = name.partition(".")
    return int(tail) if head == PREFIX and tail.isdigit() else None


@dataclasses.dataclass(frozen=True)
class Segment:
    """Rows [start, rows) committed by one writer, with their norm sum and checksums."""

    start: int
    rows: int
    norm_sum: float = 0.0
    checksums: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_record(cls, start: int, record: Mapping) -> Segment:
        checks = {k: int(v, 16) for k, v in record.get("checksums", {}).items()}
        rows, norm_sum = int(record.get("rows", start)), float(record.get("norm_sum", 0.0))
        return cls(start, rows, norm_sum, checks)

    def record(self) -> dict:
        """The JSON record (the `progress` key's format: the start is in the key)."""
        hexed = {k: f"{v:016x}" for k, v in self.checksums.items()}
        return {"rows": self.rows, "norm_sum": self.norm_sum, "checksums": hexed}


def live(segments: Sequence[Segment]) -> list[Segment]:
    """The segments in row order, without any that starts inside an earlier live one."""
    kept: list[Segment] = []
    for seg in sorted(segments, key=lambda s: s.start):
        if not kept or seg.start >= kept[-1].rows:
            kept.append(seg)
    return kept


def merge(segments: Sequence[Segment], expect_rows: int | None = None) -> Segment:
    """One segment [0, rows) of live segments that tile it; a gap (missing rows) is an error.

    Norm sums add in row order (a single segment's is returned bit for bit); checksums are sums
    mod 2^64, so they equal one writer's over the same rows.
    """
    segs = live(segments)
    end, norm_sum, checks = 0, 0.0, {}
    for seg in segs:
        if seg.start != end:
            raise StoreError(f"rows [{end}, {seg.start}) were never committed; rerun the capture")
        end, norm_sum = seg.rows, norm_sum + seg.norm_sum
        for name, value in seg.checksums.items():
            checks[name] = (checks.get(name, 0) + value) % _U64
    if expect_rows is not None and end != expect_rows:
        raise StoreError(f"{end} rows committed, expected {expect_rows}; rerun the capture")
    if len(segs) == 1:
        return segs[0]
    return Segment(0, end, norm_sum, checks)


@dataclasses.dataclass(frozen=True)
class Piece:
    """Rows [start, stop) one process writes; writer i continues the segment at `segments[i]`
    (hook i's, in the plan's hook order) from that segment's committed rows."""

    start: int
    stop: int
    segments: tuple[int, ...]


def plan(
    per_hook: Sequence[Sequence[Segment]], total: int, rows_per_shard: int, num_processes: int
) -> list[list[Piece]]:
    """Pieces per process covering every row of [0, total) some hook has not committed.

    Boundaries are every hook's live segment starts, so inside an interval between two
    boundaries each hook's committed rows are a prefix. The rows missing for some hooks (from the
    least to the most advanced hook) go to process 0's piece, which extends each hook's own
    segment; the rows missing for all are cut into `num_processes` runs of whole shards, each a
    new segment. A fresh capture is one interval: process p writes the p-th run of shards.
    """
    hooks = [live(segs) for segs in per_hook]
    cuts = sorted({0, *(s.start for segs in hooks for s in segs if s.start < total)})
    pieces: list[list[Piece]] = [[] for _ in range(num_processes)]
    for lo_edge, hi_edge in zip(cuts, [*cuts[1:], total], strict=True):
        owners = [_owner(segs, lo_edge) for segs in hooks]
        done = [min(seg.rows, hi_edge) if seg else lo_edge for seg in owners]
        lo, hi = min(done), max(done)
        if lo == hi_edge:
            continue
        shards = -(-(hi_edge - hi) // rows_per_shard)
        for p in range(num_processes):
            a = min(hi + rows_per_shard * (shards * p // num_processes), hi_edge)
            b = min(hi + rows_per_shard * (shards * (p + 1) // num_processes), hi_edge)
            if p == 0:
                own = tuple(seg.start if seg else lo_edge for seg in owners)
                if b > lo:
                    pieces[0].append(Piece(lo, b, own))
            elif b > a:
                pieces[p].append(Piece(a, b, (a,) * len(hooks)))
    return pieces


def _owner(segments: Sequence[Segment], row: int) -> Segment | None:
    """The live segment starting at `row`, else the one whose committed rows reach it."""
    at = [s for s in segments if s.start == row]
    reach = [s for s in segments if s.start < row <= s.rows]
    return (at or reach or [None])[0]
