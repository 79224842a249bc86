"""The SAE training loop, written once: one run (`train.train_sae`) or N members of one shape in
one compiled program (`sweep.sweep`).

Every batch is read once and fed to all members; the data order is a pure function of
(data_seed, step), so a run killed at any point resumes from its last checkpoint and ends where an
uninterrupted run ends. Rows come from a feed (a captured store, `StoreFeed`, or the LM itself,
sae/lm_feed.py); the state lives on a (data, model) mesh over every process's devices, the
dictionary's latents over 'model' and each batch over 'data' (BUILD.md, "Multi-device and
multi-host"). How N members share the program is a strategy, because the fastest
differs by backend (experiments/README.md, bench_sweep.py):

  single  one member, unstacked (a run of its own)
  vmap    one batched program: batched matmuls [N, B, d] x [N, d, F] (best on GPU)
  map     lax.map over members: a compiled loop, one member's matmuls at a time
  loop    the members' steps unrolled in one program (XLA may overlap them)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import numpy as np
from absl import logging

from monosem_jax import checkpoint, metrics_io, observe, parallel
from monosem_jax.activations import reader as reader_lib
from monosem_jax.sae import lm_feed
from monosem_jax.sae import run as sae_run
from monosem_jax.sae import step as sae_step

STRATEGIES = ("vmap", "map", "loop")
# experiments/README.md, bench_sweep.py: on CPU lax.map (0.72 of the members' single runs; vmap
# 1.41, slower than the singles since the sparse steps made those faster: XLA:CPU's batched
# [N, B, d] x [N, d, F] products run below its plain GEMMs). GPUs and TPUs batch well.
BEST_STRATEGY = {"cpu": "map", "gpu": "vmap", "tpu": "vmap"}


def resolve_strategy(strategy: str) -> str:
    if strategy == "auto":
        return BEST_STRATEGY.get(jax.default_backend(), "vmap")
    if strategy not in STRATEGIES:
        raise ValueError(f"sweep.strategy must be auto, vmap, map or loop, got {strategy!r}")
    return strategy


def members_step(sae_cfg, strategy: str, num_members: int):
    """The (unjitted) step of all members: (states, x_BD, hps) -> (states, metrics)."""
    step = functools.partial(sae_step.train_step, cfg=sae_cfg)
    if strategy == "single":
        return step
    if strategy == "vmap":  # named, so the sparse step's branch is chosen for all members at once
        vstep = jax.vmap(functools.partial(step, member_axis="members"), in_axes=(0, None, 0),
                         axis_name="members")
        return lambda states, x_BD, hps: vstep(states, x_BD, hps)
    if strategy == "map":
        return lambda states, x_BD, hps: jax.lax.map(
            lambda member: step(member[0], x_BD, member[1]), (states, hps)
        )

    def unrolled(states, x_BD, hps):
        outs = [step(member(states, i), x_BD, member(hps, i)) for i in range(num_members)]
        return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *outs)

    return unrolled


def member(tree, i: int):
    """Member i of a stacked pytree."""
    return jax.tree.map(lambda a: a[i], tree)


def stack(trees):
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)


@dataclasses.dataclass
class Trained:
    """What the loop leaves: final states and hyper-parameters (stacked unless single) as host
    arrays, the held-out rows and the training statistics each member's summary records."""

    states: dict
    hps: dict
    eval_ND: np.ndarray
    resumed_from_step: int
    tokens_per_s: float
    train_loss_N: np.ndarray
    step_compilations: int

    def stats(self, i: int) -> dict:
        return {"resumed_from_step": self.resumed_from_step, "tokens_per_s": self.tokens_per_s,
                "train_loss": float(self.train_loss_N[i]),
                # compilations of the train step in this process (1, or 2 where an annealed k
                # switches to a step compiled for its final k): a retrace would show here
                "step_compilations": self.step_compilations}


class StoreFeed:
    """Training rows from a captured store: the reader's global batch of each step, placed over
    the mesh's 'data' axis (each process copies its own devices' rows to them).

    A feed gives the loop a carry (state kept on the device between steps: none here), per-step
    inputs, and `draw(carry, inputs) -> (carry, x_BD)`, traced into the train step's program.
    """

    def __init__(self, cfg: sae_run.TrainConfig, st, data_seed: int, mesh):
        self.reader = reader_lib.ActivationReader(st, cfg.reader_config(data_seed))
        self.batch_sharding = parallel.data_sharding(mesh)
        self.d, self.norm_scale = st.d, st.norm_scale

    def eval_rows(self) -> np.ndarray:
        return self.reader.eval_rows_array()

    def initial_carry(self, start: int):
        del start
        return ()

    def carry_shardings(self):
        return ()

    def inputs(self, start: int):
        return self.reader.iterate(start, device_put=True, sharding=self.batch_sharding)

    def inputs_sharding(self):
        return self.batch_sharding

    @staticmethod
    def draw(carry, x_BD):
        return carry, x_BD

    def close(self) -> None:
        self.reader.close()


def open_feed(cfg: sae_run.TrainConfig, workdir: str, mesh):
    """The feed `cfg.source` names, with the run's data seed (`data_seed`, or the seed)."""
    data_seed = cfg.data_seed if cfg.data_seed >= 0 else cfg.seed
    parallel.check_batch(mesh, cfg.batch_size)
    if cfg.source == "lm":
        return lm_feed.LMFeed(cfg, workdir, data_seed, mesh)
    return StoreFeed(cfg, cfg.training_store(workdir), data_seed, mesh)


def train_members(cfg: sae_run.TrainConfig, feed, specs: list[sae_run.RunSpec], *, out_dir: str,
                  strategy: str, resample_seed: int, mesh, programs: dict | None = None) -> Trained:
    """Trains `specs` (one shape) from `out_dir`/checkpoints on, in one compiled program.

    The dictionary is sharded over `mesh`'s 'model' axis and each batch over 'data'
    (parallel.dictionary_shardings); every process runs this same loop (jax.distributed).
    `programs`: a dict the caller keeps across calls, so that runs of one shape (other traced
    hyper-parameters, other step counts) reuse one compiled step, as a scaling-law grid's
    programs do (experiments/scaling_laws.py); None compiles the step anew.
    """
    single = strategy == "single"
    # One static shape for all: TopK selects up to the largest k; each member's traced k masks.
    sae_cfg = max((s.sae_cfg for s in specs), key=lambda c: c.k)
    eval_ND = feed.eval_rows()
    replicated = parallel.replicated(mesh)
    host_hps = stack([jax.device_get(s.device_hparams()) for s in specs])
    host_states = stack([jax.device_get(sae_step.init_state(sae_cfg, jax.random.key(s.seed)))
                         for s in specs])
    if single:
        host_hps, host_states = member(host_hps, 0), member(host_states, 0)
    hps = jax.tree.map(lambda a: parallel.place(a, replicated), host_hps)
    shardings = parallel.dictionary_shardings(mesh, host_states, stacked=not single)
    states = jax.tree.map(parallel.place, host_states, shardings)
    ckpt = checkpoint.Checkpointer(os.path.join(out_dir, "checkpoints"),
                                   save_every=cfg.checkpoint_every)
    with jax.set_mesh(mesh):  # the ambient mesh: shard_select's selections stay shard-local
        start = int(np.asarray(host_states["step"]).reshape(-1)[0])
        restored = ckpt.restore(checkpoint.abstract_like(_saved(states, feed.initial_carry(0))))
        carry = None
        if restored is not None:
            states, carry = _unsaved(restored[0])
            start = int(np.asarray(jax.device_get(states["step"])).reshape(-1)[0])
            label = specs[0].name if single else f"sweep {os.path.basename(out_dir)}"
            logging.info("resuming SAE %s from checkpoint at step %d", label, start)
        if carry is None:
            carry = feed.initial_carry(start)
        try:
            return _train(cfg, feed, specs, sae_cfg, states, carry, hps, shardings, ckpt,
                          out_dir=out_dir, strategy=strategy, resample_seed=resample_seed,
                          start=start, eval_ND=eval_ND, replicated=replicated,
                          programs=programs)
        finally:
            ckpt.close()
            feed.close()


def _saved(states, carry):
    """The checkpointed tree: the states, plus the feed's carry where it has one."""
    return {**states, "feed": carry} if jax.tree.leaves(carry) else states


def _unsaved(tree):
    tree = dict(tree)
    return tree, tree.pop("feed", None)


def _train(cfg, feed, specs, sae_cfg, states, carry, hps, shardings, ckpt, *, out_dir, strategy,
           resample_seed, start, eval_ND, replicated, programs=None) -> Trained:
    single = strategy == "single"
    layouts = (feed.carry_shardings(), shardings, feed.inputs_sharding(), replicated)
    compile_for = functools.partial(compile_step, strategy=strategy, num_members=len(specs),
                                    draw=feed.draw, shardings=layouts)
    if programs is not None:  # keyed by all that the program depends on besides traced values
        compile_for = _reused(programs, compile_for, strategy, len(specs), feed.draw,
                              jax.tree.structure(layouts), *jax.tree.leaves(layouts))
    step_fn = compile_for(sae_cfg)
    settled = _settled(specs)
    settled_fn = compile_for(dataclasses.replace(sae_cfg, k=settled[1])) if settled else step_fn
    resample_fn = _resampler(sae_cfg, single, feed.draw, shardings, replicated)
    # A sweep's rows name their member: TensorBoard gets one run per member (observe.py).
    writer = metrics_io.MetricsWriter(os.path.join(out_dir, "metrics.jsonl"), start,
                                      tensorboard=os.path.join(out_dir, "tensorboard"))
    profile = observe.ProfileWindow(os.path.join(out_dir, "profile"), cfg.profile_steps, start,
                                    cfg.steps)
    report = _Reporter(cfg, specs, writer)
    lagged = metrics_io.LaggedMetrics(cfg.steps, report)
    inputs = feed.inputs(start)
    try:
        for step in range(start, cfg.steps):
            step_inputs = next(inputs)
            profile.before(step)
            if step in cfg.resample_steps and sae_cfg.variant == "towards_2023":
                key = jax.random.fold_in(jax.random.key(resample_seed), step)
                keys = key if single else jax.random.split(key, len(specs))
                states = resample_fn(states, carry, step_inputs, keys, hps)
                logging.info("step %d: resampled dead latents", step)
            fn = settled_fn if settled and step >= settled[0] else step_fn
            carry, states, metrics = fn(carry, states, step_inputs, hps)
            lagged.dispatched(step, metrics)
            profile.after(step, (carry, states, metrics))
            done = step + 1
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                report.check(step, jax.device_get(metrics))  # never save a NaN state
                ckpt.save(done, _saved(states, carry),
                          {"step": done, "members": [s.name for s in specs]}, force=True)
        lagged.flush()
    finally:
        profile.close()
        writer.close()
        inputs.close()
    rate = lagged.timed_steps / lagged.elapsed if lagged.elapsed else 0.0
    last = report.last or {"loss": _logged_final_loss(writer.path, specs, cfg.steps)}
    compilations = step_fn._cache_size() + (settled_fn._cache_size() if settled else 0)
    return Trained(parallel.to_host(states), parallel.to_host(hps), eval_ND, start,
                   rate * cfg.batch_size, np.asarray(last["loss"], np.float64).reshape(-1),
                   compilations)


def compile_step(sae_cfg, *, strategy: str = "single", num_members: int = 1,
                 draw=StoreFeed.draw, shardings=None):
    """The jitted program of one step: (carry, states, inputs, hps) -> (carry, states, metrics):
    the feed's draw, then `num_members` members' train steps (carry and states donated).

    `shardings`: (carry, states, inputs, hps) NamedSharding trees; the outputs keep the carry's
    and states' layouts (so every step hits the one compiled program) and the metrics are
    replicated."""
    members_fn = members_step(sae_cfg, strategy, num_members)

    def program(carry, states, inputs, hps):
        carry, x_BD = draw(carry, inputs)
        states, metrics = members_fn(states, x_BD, hps)
        return carry, states, metrics

    if shardings is None:
        return jax.jit(program, donate_argnums=(0, 1))
    carry_sh, states_sh, _, replicated = shardings
    return jax.jit(program, donate_argnums=(0, 1), in_shardings=shardings,
                   out_shardings=(carry_sh, states_sh, replicated))


def _reused(programs: dict, compile_for, *key):
    """compile_for, looked up first in `programs` under (its SAEConfig, *key)."""
    def compiled(sae_cfg):
        if (sae_cfg, *key) not in programs:
            programs[(sae_cfg, *key)] = compile_for(sae_cfg)
        return programs[(sae_cfg, *key)]
    return compiled


def _settled(specs) -> tuple[int, int] | None:
    """(the step from which every member's k has settled, the largest final k), or None when no
    member anneals k (sae_run.k_settled_step)."""
    steps = [sae_run.k_settled_step(s) for s in specs]
    if all(s is None for s in steps):
        return None
    return max(s or 0 for s in steps), max(int(s.hparams["k"]) for s in specs)


def _resampler(sae_cfg, single: bool, draw, shardings, replicated):
    """(states, carry, inputs, keys, hps) -> states with dead latents resampled from the step's
    batch (drawn again: a feed's draw is a pure function of its carry and inputs)."""
    resample = functools.partial(sae_step.resample_dead, cfg=sae_cfg)
    resample = resample if single else jax.vmap(resample, in_axes=(0, None, 0, 0))

    def fn(states, carry, inputs, keys, hps):
        return resample(states, draw(carry, inputs)[1], keys, hps)

    return jax.jit(fn, donate_argnums=0, out_shardings=shardings)


def _logged_final_loss(path: str, specs, steps: int) -> np.ndarray:
    """Each member's loss as logged at the last step (NaN where absent): a run killed after its
    last checkpoint resumes there and runs no step, yet its summary records that loss."""
    if not os.path.exists(path):  # written by process 0 only
        return np.full(len(specs), np.nan)
    with open(path) as f:
        rows = [row for row in map(json.loads, filter(str.strip, f)) if row.get("step") == steps]
    loss = {row.get("member", specs[0].name): row.get("loss") for row in rows}
    return np.array([np.nan if loss.get(s.name) is None else loss[s.name] for s in specs])


class _Reporter:
    """Checks, logs and writes the members' metrics, fetched one step late (LaggedMetrics)."""

    def __init__(self, cfg: sae_run.TrainConfig, specs, writer):
        self.cfg, self.specs, self.writer = cfg, specs, writer
        self.last = None

    def check(self, step: int, metrics: dict) -> None:
        for spec, loss in zip(self.specs, np.asarray(metrics["loss"]).reshape(-1), strict=True):
            sae_run.check_finite(spec.name, step, loss)

    def __call__(self, step: int, metrics: dict, steps_per_s: float, eta: str) -> None:
        self.check(step, metrics)
        self.last = metrics
        done, cfg = step + 1, self.cfg
        if done % cfg.log_every and done != cfg.steps:
            return
        tokens_per_s = steps_per_s * cfg.batch_size
        if len(self.specs) == 1 and np.ndim(metrics["loss"]) == 0:
            logging.info(
                "sae %s step %d/%d loss %.4f mse %.4f ev %.3f l0 %.1f dead %.3f | %.0f tok/s | "
                "eta %s", self.specs[0].name, done, cfg.steps, metrics["loss"], metrics["mse"],
                metrics["explained_variance"], metrics["l0"], metrics["dead_fraction"],
                tokens_per_s, eta)
            self.writer.write(done, tokens_per_s=tokens_per_s, **metrics)
            return
        ev, l0 = np.asarray(metrics["explained_variance"]), np.asarray(metrics["l0"])
        logging.info("sweep step %d/%d ev %.3f..%.3f l0 %.1f..%.1f | %.0f tok/s | eta %s", done,
                     cfg.steps, ev.min(), ev.max(), l0.min(), l0.max(), tokens_per_s, eta)
        for i, spec in enumerate(self.specs):
            self.writer.write(done, member=spec.name,
                              **{k: np.asarray(v)[i] for k, v in metrics.items()})
