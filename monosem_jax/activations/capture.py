"""The capture stage: run the trained GPT over the corpus and store hook activations.

Contexts are the consecutive windows of `context_len` tokens of a split's flat token stream
(documents packed, each after its end-of-text token, so no compute is spent on padding). A row
records the token id, the document id and the token's position in its end-of-text-prefixed
document, so its global index is `doc_starts[doc] - 1 + position`, its context window is
`index // context_len` and its place in that window `index % context_len`: every row traces back
to the exact context the model saw.

One jitted forward returns only the requested hooks (XLA drops the layers after the last one),
for all hooks at once. The loop dispatches the forward of batch i+1 before copying batch i to the
host and handing it to the asynchronous store writers, so writing hides behind compute. Rows kept
per context are a pure function of (seed, window), so a killed capture resumes from the writers'
committed row counts with no missing or duplicate rows. Batches sit on one grid (windows
[k·B, (k+1)·B)), whoever runs them and wherever a resume starts.

Several processes (jax.distributed) capture as one: `segments.plan` gives each a run of whole
shards of the same arrays (a resume: of the rows still missing), each process runs the forward on
its own first device and writes its shards with its own progress record, and after a barrier
process 0 merges the records (every row exactly once, checksums and norm sums combined) and
writes COMPLETE, then the summaries. The store is the one a single process writes, byte for
byte up to the last bit of norm_sum (added per process, then across processes), and a capture
killed with P processes resumes with any number.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from monosem_jax import config_values, distributed, metrics_io, stage_config, workdir_lock
from monosem_jax.activations import segments, store_writer
from monosem_jax.activations import store as store_lib
from monosem_jax.corpus import dataset, tokenizer
from monosem_jax.gpt import artifact as gpt_artifact
from monosem_jax.gpt import model as gpt_model


@dataclasses.dataclass(frozen=True)
class CaptureConfig:
    """Validated capture settings (monosem_jax/configs/capture/default.py documents each)."""

    hooks: tuple[str, ...]
    dtype: str = "float32"
    positions_per_context: int = 0  # 0 = every position; n = n random positions per context
    exclude_first: bool = True  # position 0 of each context is an outlier (attention sink)
    max_rows: int = 0  # 0 = the whole split
    split: str = "train"
    batch_size: int = 64
    rows_per_shard: int = 65536
    max_in_flight: int = 4
    seed: int = 0
    kvstore: str = ""  # "" = W/acts on the local disk; else a path or a JSON kvstore spec
    forward_only_batches: int = 8  # batches timed without writing, for forward_only_tokens_per_s

    def __post_init__(self):
        stage_config.check(bool(self.hooks), "hooks", self.hooks, "one or more hook names")
        stage_config.one_of("dtype", self.dtype, ("float32", "bfloat16"))
        stage_config.one_of("split", self.split, ("train", "eval"))
        stage_config.positive(self, ("batch_size", "rows_per_shard", "max_in_flight",
                                     "forward_only_batches"))
        stage_config.non_negative(self, ("positions_per_context", "max_rows"), note="0 = all")
        stage_config.non_negative(self, ("seed",))  # numpy's seeds are >= 0
        stage_config.path_or_spec("kvstore", self.kvstore)


def capture_config_from(config: ml_collections.ConfigDict) -> CaptureConfig:
    """The frozen CaptureConfig of a ConfigDict (one clear ValueError per bad value)."""
    hooks = config_values.str_tuple("hooks", config.hooks)
    return stage_config.from_config(CaptureConfig, config, hooks=hooks)


def store_root(cfg: CaptureConfig, workdir: str) -> dict:
    """The kvstore spec of the store root: W/acts by default, a path, or a JSON spec."""
    if not cfg.kvstore:
        return store_lib.kvstore_for(os.path.join(workdir, "acts"))
    if cfg.kvstore.lstrip().startswith("{"):
        return store_lib.kvstore_for(json.loads(cfg.kvstore))
    return store_lib.kvstore_for(cfg.kvstore)


def kept_positions(cfg: CaptureConfig, window: int, length: int) -> np.ndarray:
    """Sorted positions kept in context `window`: a pure function of (seed, window)."""
    first = 1 if cfg.exclude_first else 0
    candidates = np.arange(first, length)
    n = cfg.positions_per_context
    if n == 0 or n >= candidates.size:
        return candidates
    rng = np.random.default_rng([cfg.seed, window])
    return np.sort(rng.choice(candidates, size=n, replace=False))


@functools.partial(jax.jit, static_argnames=("model_cfg", "hooks"))
def hook_activations(params, tokens_BL, positions_BK, model_cfg, hooks):
    """{hook: [B*K, d] float32} at the kept positions; nothing after the last hook is computed."""
    _, acts = gpt_model.forward(model_cfg, params, tokens_BL, capture=hooks)
    out = {}
    for name in hooks:
        picked_BKD = jnp.take_along_axis(acts[name], positions_BK[:, :, None], axis=1)
        out[name] = picked_BKD.reshape(-1, picked_BKD.shape[-1]).astype(jnp.float32)
    return out


class _Windows:
    """The split's context windows, their kept positions, and the rows' provenance."""

    def __init__(self, split: dataset.Split, cfg: CaptureConfig, length: int):
        self.split, self.cfg, self.length = split, cfg, length
        self.count = (split.tokens_N.shape[0]) // length
        self.rows_per_window = kept_positions(cfg, 0, length).size

    def batch(self, first: int, count: int):
        """Tokens, kept positions and row provenance of windows first.. (wrapping past the end)."""
        windows = np.arange(first, first + count) % self.count
        tokens_BL = np.asarray(
            self.split.tokens_N[(windows[:, None] * self.length + np.arange(self.length))],
            np.int32,
        )
        positions_BK = np.stack([kept_positions(self.cfg, w, self.length) for w in windows])
        index_R = (windows[:, None] * self.length + positions_BK).reshape(-1)
        # doc_starts[d] - 1 is document d's end-of-text token: position 0 of the prefixed doc.
        doc_R = np.searchsorted(self.split.doc_starts_D - 1, index_R, side="right") - 1
        position_R = index_R - (self.split.doc_starts_D[np.maximum(doc_R, 0)] - 1)
        # Tokens before the first end-of-text (none in our layout) get document -1.
        position_R = np.where(doc_R < 0, index_R, position_R)
        meta = {
            "token_id": tokens_BL.reshape(-1)[
                (np.arange(count)[:, None] * self.length + positions_BK).reshape(-1)
            ].astype(np.int32),
            "doc_id": doc_R.astype(np.int32),
            "position": position_R.astype(np.int32),
        }
        return tokens_BL, positions_BK.astype(np.int32), meta


@workdir_lock.writer(lambda config: "acts")
def capture(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the capture stage (a no-op when every hook's store is complete).

    With several processes (jax.distributed), each writes its own runs of whole shards
    (segments.plan), process 0 completes the stores once every process's writes resolved, and
    the summaries are process 0's.
    """
    t_start = time.time()
    cfg = capture_config_from(config)
    model_cfg, params, lm_step = gpt_artifact.load_trained(workdir)
    gpt_model.check_hooks(model_cfg, cfg.hooks)
    root = store_root(cfg, workdir)
    summaries_dir = os.path.join(workdir, "acts")
    todo = [h for h in cfg.hooks if not store_lib.is_complete(root, h)]
    if not todo:
        logging.info("capture already complete for %s; nothing to do", ", ".join(cfg.hooks))
        return _summaries(cfg, summaries_dir)
    if jax.process_count() > 1 and root.get("driver") == "memory":
        raise ValueError("a memory kvstore lives in one process; a multi-process capture needs "
                         "one every process reaches (a shared path, gcs, s3)")

    data_dir = os.path.join(workdir, "data")
    meta = dataset.load_meta(data_dir)
    split = dataset.load_split(data_dir, cfg.split)
    length = model_cfg.context_len
    windows = _Windows(split, cfg, length)
    total_rows = windows.count * windows.rows_per_window
    if cfg.max_rows:
        total_rows = min(total_rows, cfg.max_rows)
    if total_rows <= 0:
        raise ValueError(f"the {cfg.split} split has no full context of {length} tokens")

    attributes = {
        "lm_checkpoint_step": lm_step,
        "tokenizer_hash": meta["tokenizer_hash"],
        "context_len": length,
        "split": cfg.split,
        "capture_config": dataclasses.asdict(cfg),
        "model_config": dataclasses.asdict(model_cfg),
    }
    specs = {
        h: store_lib.StoreSpec(
            kvstore=root,
            hook=h,
            d=gpt_model.hook_dim(model_cfg, h),
            dtype=cfg.dtype,
            rows_per_shard=cfg.rows_per_shard,
        )
        for h in todo
    }
    if distributed.is_primary():  # creates (or checks) the arrays, sized once for every process
        for h in todo:
            store_writer.StoreWriter(specs[h], {**attributes, "hook": h}).reserve(total_rows)
    found = [store_lib.read_segments(root, h) for h in todo]
    pieces = segments.plan(found, total_rows, cfg.rows_per_shard, jax.process_count())
    # Every process has read the same records before any is rewritten.
    distributed.barrier("capture: stores created, progress read")
    done_rows = total_rows - sum(p.stop - p.start for mine in pieces for p in mine)
    if done_rows:
        logging.info("resuming capture at row %d of %d", done_rows, total_rows)

    # Each process runs the forward on its own first device: its rows are its own (no
    # collective), and a window's activations are bit for bit those of a one-process capture.
    params = jax.device_put(jax.device_get(params), jax.local_devices()[0])
    forward_only = _forward_only_tokens_per_s(params, windows, model_cfg, cfg)
    fn = functools.partial(hook_activations, model_cfg=model_cfg, hooks=cfg.hooks)

    def open_writer(hook: str, segment_start: int) -> store_writer.StoreWriter:
        return store_writer.StoreWriter(specs[hook], {**attributes, "hook": hook},
                                        max_in_flight=cfg.max_in_flight,
                                        segment_start=segment_start)

    t_loop = time.time()
    mine = pieces[jax.process_index()]
    logger = _ProgressLog(sum(p.stop - p.start for p in mine))
    for piece in mine:
        _capture_piece(piece, todo, open_writer, fn, params, windows, logger)
    distributed.barrier("capture: every process's rows written")
    loop_s = time.time() - t_loop
    rpw = windows.rows_per_window
    windows_done = sum(-(-p.stop // rpw) - p.start // rpw for mine in pieces for p in mine)
    tokens_per_s = windows_done * length / loop_s if loop_s > 0 else 0.0
    run = {
        "dtype": cfg.dtype,
        "resumed_from_row": done_rows,
        "tokens_per_s": tokens_per_s,
        # Process 0's forward-only rate times the process count (hosts alike).
        "forward_only_tokens_per_s": forward_only * jax.process_count(),
        "lm_checkpoint_step": lm_step,
        "processes": jax.process_count(),
    }
    if distributed.is_primary():
        for h in todo:
            final = store_writer.complete(specs[h], total_rows)
            summary = {k: final[k] for k in ("hook", "rows", "d", "bytes", "norm_scale")}
            summary.update(run, wall_s=time.time() - t_start)
            summary["write_overhead_ratio"] = tokens_per_s / run["forward_only_tokens_per_s"]
            metrics_io.write_json_atomic(os.path.join(summaries_dir, h, "summary.json"), summary)
    distributed.barrier("capture: stores complete")
    return _summaries(cfg, summaries_dir)


class _ProgressLog:
    """Logs this process's capture progress every 10 s and at the end."""

    def __init__(self, rows: int):
        self.rows, self.done, self.t_start, self.last = rows, 0, time.time(), time.time()

    def add(self, rows: int, final: bool = False) -> None:
        self.done += rows
        if time.time() - self.last < 10 and not final:
            return
        self.last = time.time()
        rate = self.done / max(time.time() - self.t_start, 1e-9)
        who = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
        logging.info(
            "capture %s%d/%d rows (%.1f%%) | %.0f rows/s | eta %s",
            who,
            self.done,
            self.rows,
            100 * self.done / max(self.rows, 1),
            rate,
            metrics_io.format_eta((self.rows - self.done) / rate) if rate else "?",
        )


def _capture_piece(piece: segments.Piece, hooks: list[str], open_writer, fn, params,
                   windows: _Windows, logger: _ProgressLog) -> None:
    """Writes rows [piece.start, piece.stop) of every hook that lacks them, then flushes."""
    writers = {h: open_writer(h, start) for h, start in zip(hooks, piece.segments, strict=True)}
    writers = {h: w for h, w in writers.items() if w.rows_written < piece.stop}
    if not writers:
        return
    # Batches sit on one grid, windows [k·B, (k+1)·B) (the last wrapping past the end), whoever
    # runs them and wherever a resume starts: a row's forward never depends on the process count.
    size, rpw = windows.cfg.batch_size, windows.rows_per_window
    first_row = min(w.rows_written for w in writers.values())
    batches = range(first_row // rpw // size, (piece.stop - 1) // rpw // size + 1)
    pending, written = None, first_row
    for k in [*batches, None]:
        launched = None
        if k is not None:
            # Every forward has the same shape (one compile); _write keeps the piece's rows.
            tokens_BL, positions_BK, row_meta = windows.batch(k * size, size)
            launched = (k * size, fn(params, tokens_BL, positions_BK), row_meta)
        if pending is not None:
            _write(pending, writers, rpw, piece.stop)
            now = min(w.rows_written for w in writers.values())
            logger.add(now - written, final=k is None)
            written = now
        pending = launched
    for writer in writers.values():
        writer.flush()


def _write(pending, writers, rows_per_window: int, stop: int) -> None:
    """Copies one batch to the host and appends the rows below `stop` each writer lacks."""
    first, acts, meta = pending
    acts = jax.device_get(acts)
    batch_start = first * rows_per_window
    for h, writer in writers.items():
        lo = max(writer.rows_written - batch_start, 0)  # skip rows already stored (resume)
        hi = min(acts[h].shape[0], stop - batch_start)
        if hi > lo:
            writer.append(
                acts[h][lo:hi],
                meta["token_id"][lo:hi],
                meta["doc_id"][lo:hi],
                meta["position"][lo:hi],
            )


def _forward_only_tokens_per_s(params, windows: _Windows, model_cfg, cfg: CaptureConfig) -> float:
    """Tokens/s of the same jitted forward with no host copy or writing (compile excluded)."""
    n = min(cfg.batch_size, windows.count)
    tokens_BL, positions_BK, _ = windows.batch(0, n)
    fn = functools.partial(hook_activations, model_cfg=model_cfg, hooks=cfg.hooks)
    jax.block_until_ready(fn(params, tokens_BL, positions_BK))
    t = time.time()
    for _ in range(cfg.forward_only_batches):
        out = fn(params, tokens_BL, positions_BK)
    jax.block_until_ready(out)
    return cfg.forward_only_batches * n * windows.length / (time.time() - t)


def _summaries(cfg: CaptureConfig, summaries_dir: str) -> dict:
    """The per-hook summaries, and one combined summary printed as the last line."""
    per_hook = {
        h: metrics_io.read_json(os.path.join(summaries_dir, h, "summary.json")) for h in cfg.hooks
    }
    first = per_hook[cfg.hooks[0]]
    combined = {
        "hooks": list(cfg.hooks),
        "rows": first["rows"],
        "bytes": sum(s["bytes"] for s in per_hook.values()),
        "tokens_per_s": first["tokens_per_s"],
        "forward_only_tokens_per_s": first["forward_only_tokens_per_s"],
        "write_overhead_ratio": first["write_overhead_ratio"],
        "norm_scale": {h: s["norm_scale"] for h, s in per_hook.items()},
        "wall_s": first["wall_s"],
    }
    return metrics_io.finish_summary(os.path.join(summaries_dir, "summary.json"), combined)


def token_text(tok, token_ids) -> list[str]:
    """Decoded text of each token id (for provenance displays)."""
    return [tok.decode([int(t)]) for t in token_ids]


__all__ = ["CaptureConfig", "capture", "capture_config_from", "kept_positions", "tokenizer"]
