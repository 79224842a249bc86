"""Training rows straight from the LM (`source = "lm"`): no store on disk.

Each step runs the LM forward on a few fresh train-split contexts and the SAE step in one jitted
program (sae/loop.py compile_step: the feed's `draw`, then the members' steps). The forward's
rows go through an on-device shuffle buffer of `lm_buffer_batches` × B rows:

  step s   x_BD = buffer[slots_B]; buffer[slots_B] = the step's B fresh rows

so every fresh row is trained on exactly once, after a random (geometric, mean
lm_buffer_batches steps) stay in the buffer, and a batch mixes the rows of many steps' contexts.

Order. Epoch e of the context stream is a permutation of the train split's windows of
context_len tokens seeded by (data seed, e); fill i takes the next W = ceil(B / K) contexts of
the stream (K kept positions per context: capture's `kept_positions`, position 0 excluded by
default) and keeps B of their W·K rows, chosen by (seed, i). Fills 0..F-1 (F =
lm_buffer_batches) fill the buffer before step 0; step s takes fill F + s and its slots from
(seed, s). So the data order is a pure function of (seed, step).

Resume. The buffer is the feed's carry: the loop donates it to each step and checkpoints it with
the SAE state, so a killed run resumes bit-exactly. Rebuilding it instead by replaying the fills
would need every fill since step 0 (a row can stay in the buffer any number of steps) and a
checkpoint that skips the carry; the buffer costs B·F·d·4 bytes per checkpoint (the tiny
default: 16 MB beside the SAE state's 6.3 MB).

norm_scale (SAE inputs are hook activations × norm_scale, E‖x‖ = √d) is the store's formula over
the initial fill's rows: a pure function of the seed, so a resumed run records the same value.
Held-out rows are the eval split's first `eval_rows` rows (its windows in order), never trained
on.
"""

from __future__ import annotations

import functools
import itertools
import math
import os

import jax
import numpy as np

from monosem_jax import parallel
from monosem_jax.activations import capture
from monosem_jax.corpus import dataset
from monosem_jax.gpt import artifact as gpt_artifact
from monosem_jax.gpt import model as gpt_model
from monosem_jax.sae import run as sae_run

# Independent numpy streams per use, all seeded by the data seed.
_TAG_ORDER, _TAG_KEEP, _TAG_SLOTS = 0x6F7264, 0x6B6570, 0x736C74
_EVAL_CONTEXTS = 64  # contexts per forward when computing the held-out rows


class _Contexts:
    """A split's windows of `length` tokens and their kept positions."""

    def __init__(self, split: dataset.Split, length: int, kept: capture.CaptureConfig, name: str):
        self.split, self.length, self.kept = split, length, kept
        self.count = split.tokens_N.shape[0] // length
        if self.count == 0:
            raise ValueError(f"the {name} split has no full context of {length} tokens")
        self.rows_per_context = capture.kept_positions(kept, 0, length).size

    def batch(self, windows_W: np.ndarray, pad_to: int) -> tuple[np.ndarray, np.ndarray]:
        """tokens_WL, positions_WK of the windows, padded with window 0 to `pad_to` contexts
        (a fixed shape; the padding's rows are never kept)."""
        windows_W = np.concatenate([windows_W, np.zeros(pad_to - windows_W.size, np.int64)])
        tokens_WL = np.asarray(
            self.split.tokens_N[windows_W[:, None] * self.length + np.arange(self.length)],
            np.int32)
        positions_WK = np.stack([capture.kept_positions(self.kept, int(w), self.length)
                                 for w in windows_W]).astype(np.int32)
        return tokens_WL, positions_WK


class LMFeed:
    """A loop feed (sae/loop.py) that computes each step's rows with the LM: see the module
    docstring for the order, the buffer, norm_scale and the held-out rows."""

    def __init__(self, cfg: sae_run.TrainConfig, workdir: str, data_seed: int, mesh):
        self.model_cfg, params, self.lm_step = gpt_artifact.load_trained(workdir)
        gpt_model.check_hooks(self.model_cfg, (cfg.hook,))
        self.cfg, self.seed, self.hook = cfg, data_seed, cfg.hook
        self.d = gpt_model.hook_dim(self.model_cfg, cfg.hook)
        length = self.model_cfg.context_len
        kept = capture.CaptureConfig(hooks=(cfg.hook,), seed=data_seed,
                                     positions_per_context=cfg.lm_positions_per_context,
                                     exclude_first=cfg.lm_exclude_first)
        data_dir = os.path.join(workdir, "data")
        self.train = _Contexts(dataset.load_split(data_dir, "train"), length, kept, "train")
        self.eval = _Contexts(dataset.load_split(data_dir, "eval"), length, kept, "eval")
        available = self.eval.count * self.eval.rows_per_context
        if not 0 < cfg.eval_rows <= available:
            raise ValueError(f"config.eval_rows={cfg.eval_rows!r} is invalid; valid: 1 to "
                             f"{available} (the eval split's rows, with source 'lm')")
        self.batch_size = cfg.batch_size
        self.contexts_per_fill = -(-cfg.batch_size // self.train.rows_per_context)
        data = mesh.shape["data"]  # the forward's contexts split over 'data'
        self.padded_contexts = -(-self.contexts_per_fill // data) * data
        self.fills = cfg.lm_buffer_batches  # fills before step 0
        self.buffer_rows = self.fills * cfg.batch_size
        self.host_params = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), params)
        self.replicated = parallel.replicated(mesh)
        self.batch_sharding = parallel.data_sharding(mesh)
        self._lm = None  # params placed over the mesh, on first use
        self._local_lm = None  # params on this process's first device (fill, held-out rows)
        self._filled_ND = None  # the initial fill's rows (unscaled), on first use
        self._norm_scale = None
        self._orders = {}  # epoch -> its permutation of the train windows
        self.draw = functools.partial(_draw, model_cfg=self.model_cfg, hook=cfg.hook,
                                      batch_sharding=self.batch_sharding)

    # ------------------------------------------------------------------ the order, on the host
    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 4:  # a fill straddles at most two epochs
                self._orders.pop(next(iter(self._orders)))
            rng = np.random.default_rng([self.seed, _TAG_ORDER, epoch])
            self._orders[epoch] = rng.permutation(self.train.count)
        return self._orders[epoch]

    def fill_windows(self, fill: int) -> np.ndarray:
        """The train windows of fill `fill`: stream positions [fill·W, (fill+1)·W)."""
        stream = np.arange(fill * self.contexts_per_fill, (fill + 1) * self.contexts_per_fill)
        epoch_W, index_W = np.divmod(stream, self.train.count)
        return np.array([self._epoch_order(int(e))[i] for e, i in zip(epoch_W, index_W,
                                                                       strict=True)])

    def fill_inputs(self, fill: int) -> dict:
        """Host arrays of fill `fill`: its contexts, kept positions and which B of their rows
        are kept (flat indices into the W·K rows, context-major)."""
        tokens_WL, positions_WK = self.train.batch(self.fill_windows(fill), self.padded_contexts)
        rows = self.contexts_per_fill * self.train.rows_per_context
        rng = np.random.default_rng([self.seed, _TAG_KEEP, fill])
        keep_B = np.sort(rng.choice(rows, self.batch_size, replace=False))
        return {"tokens_WL": tokens_WL, "positions_WK": positions_WK,
                "keep_B": keep_B.astype(np.int32)}

    def fill_rows(self, fill: int) -> np.ndarray:
        """Fill `fill`'s B kept rows [B, d] (unscaled), computed outside the step's program
        without the mesh's padding (so norm_scale does not depend on the device count)."""
        inputs, real = self.fill_inputs(fill), self.contexts_per_fill
        rows_ND = self._rows(inputs["tokens_WL"][:real], inputs["positions_WK"][:real])
        return rows_ND[inputs["keep_B"]]

    def step_slots(self, step: int) -> np.ndarray:
        """The buffer slots step `step` trains on and refills."""
        rng = np.random.default_rng([self.seed, _TAG_SLOTS, step])
        return rng.choice(self.buffer_rows, self.batch_size, replace=False).astype(np.int32)

    # ------------------------------------------------------------------ the feed interface
    @property
    def norm_scale(self) -> float:
        if self._norm_scale is None:
            rows_ND = self.initial_fill().astype(np.float64)
            norm_sum = float(np.linalg.norm(rows_ND, axis=1).sum())
            self._norm_scale = math.sqrt(self.d) * rows_ND.shape[0] / norm_sum
        return self._norm_scale

    def eval_rows(self) -> np.ndarray:
        want, per = self.cfg.eval_rows, self.eval.rows_per_context
        windows = np.arange(-(-want // per))
        parts = [self._rows(*self.eval.batch(windows[i:i + _EVAL_CONTEXTS], _EVAL_CONTEXTS))
                 for i in range(0, windows.size, _EVAL_CONTEXTS)]
        return (np.concatenate(parts)[:want] * np.float32(self.norm_scale)).astype(np.float32)

    def initial_carry(self, start: int) -> dict:
        if start != 0:
            raise ValueError("the lm feed's buffer after step 0 comes only from a checkpoint")
        buffer_ND = self.initial_fill() * np.float32(self.norm_scale)
        return {"buffer_ND": parallel.place(buffer_ND, self.replicated)}

    def carry_shardings(self) -> dict:
        return {"buffer_ND": self.replicated}

    def inputs_sharding(self) -> dict:
        return {"lm": jax.tree.map(lambda _: self.replicated, self.host_params),
                "scale": self.replicated,
                "tokens_WL": self.batch_sharding, "positions_WK": self.batch_sharding,
                "keep_B": self.replicated, "slots_B": self.replicated}

    def inputs(self, start: int):
        """Step `start`'s inputs and on: fill F + step's contexts and the step's slots."""
        shardings = self.inputs_sharding()
        constant = {"lm": self._placed_lm(),
                    "scale": parallel.place(np.float32(self.norm_scale), self.replicated)}
        for step in itertools.count(start):
            host = {**self.fill_inputs(self.fills + step), "slots_B": self.step_slots(step)}
            yield {**constant, **{k: parallel.place(v, shardings[k]) for k, v in host.items()}}

    def close(self) -> None:
        self._lm = self._local_lm = self._filled_ND = None

    # ------------------------------------------------------------------ helpers
    def _placed_lm(self):
        if self._lm is None:
            self._lm = jax.tree.map(lambda a: parallel.place(a, self.replicated), self.host_params)
        return self._lm

    def _rows(self, tokens_WL: np.ndarray, positions_WK: np.ndarray) -> np.ndarray:
        """Unscaled rows [W·K, d] of the contexts (context-major), computed on this process's
        first device."""
        device = jax.local_devices()[0]
        if self._local_lm is None:
            self._local_lm = jax.device_put(self.host_params, device)
        # Its own one-device mesh: the loop may call in while the run's mesh is the ambient one.
        with jax.set_mesh(parallel.make_mesh(devices=[device])):
            acts = capture.hook_activations(self._local_lm, tokens_WL, positions_WK,
                                            model_cfg=self.model_cfg, hooks=(self.hook,))
        return np.asarray(jax.device_get(acts[self.hook]))

    def initial_fill(self) -> np.ndarray:
        """The buffer before step 0 (unscaled): fills 0..F-1's kept rows, fill i in slots
        [i·B, (i+1)·B)."""
        if self._filled_ND is None:
            self._filled_ND = np.concatenate([self.fill_rows(i) for i in range(self.fills)])
        return self._filled_ND


def _draw(carry, inputs, *, model_cfg, hook: str, batch_sharding):
    """(carry, inputs) -> (carry, x_BD): the step's batch from the buffer's slots, which the
    step's fresh rows (its contexts' activations at the kept rows) then refill."""
    acts_ND = capture.hook_activations(inputs["lm"], inputs["tokens_WL"], inputs["positions_WK"],
                                       model_cfg=model_cfg, hooks=(hook,))[hook]
    buffer_ND, slots_B = carry["buffer_ND"], inputs["slots_B"]
    x_BD = buffer_ND.at[slots_B].get(unique_indices=True)
    fresh_BD = acts_ND[inputs["keep_B"]] * inputs["scale"]
    buffer_ND = buffer_ND.at[slots_B].set(fresh_BD, unique_indices=True)
    return {"buffer_ND": buffer_ND}, jax.lax.with_sharding_constraint(x_BD, batch_sharding)
