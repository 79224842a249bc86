"""The SAE stage: stream a store, run the jitted step, checkpoint, evaluate on held-out rows.

A run lives in `W/sae/<name>/`: Orbax checkpoints (resume is automatic: the data order is a pure
function of (seed, step)), `metrics.jsonl`, `feature_density.npy` (firing frequency of each
feature on the held-out rows), `config.json` and `summary.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from monosem_jax import checkpoint, metrics_io
from monosem_jax.activations import reader as reader_lib
from monosem_jax.sae import artifact
from monosem_jax.sae import metrics as sae_metrics
from monosem_jax.sae import model as sae_model
from monosem_jax.sae import step as sae_step

# Config fields that become traced hyper-parameters (and so can vary inside one sweep).
HPARAM_FIELDS = (
    "lr",
    "l1_coef",
    "aux_coef",
    "jl_coef",
    "l0_coef",
    "k",
    "k_start",
    "l1_warmup_frac",
    "lr_decay_frac",
    "k_anneal_frac",
    "jl_warmup_frac",
    "threshold_rate",
)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything a single SAE run needs, resolved from the config and the store."""

    name: str
    run_dir: str
    sae_cfg: sae_model.SAEConfig
    hparams: dict  # python numbers (k_start resolved)
    steps: int
    batch_size: int
    seed: int
    resample_steps: tuple[int, ...]


def sae_config_from(config: ml_collections.ConfigDict, d: int, k: int | None = None):
    return sae_model.SAEConfig(
        variant=config.variant,
        d=d,
        d_sae=config.d_sae,
        k=k or config.k,
        k_aux=min(config.k_aux, config.d_sae),
        dead_steps=config.dead_steps,
        jumprelu_bandwidth=config.jumprelu_bandwidth,
        prefixes=_int_list("prefixes", config.get("prefixes", "")),
    )


def _int_list(field: str, value) -> tuple[int, ...]:
    """'64,256' (or a sequence of ints) -> (64, 256); a clear ValueError otherwise."""
    items = str(value).split(",") if isinstance(value, str) else list(value)
    try:
        return tuple(int(v) for v in items if str(v).strip())
    except ValueError:
        raise ValueError(
            f"config.{field}={value!r} is invalid; valid: comma-separated integers"
        ) from None


def hparams_from(config: ml_collections.ConfigDict, **overrides) -> dict:
    values = {name: config[name] for name in HPARAM_FIELDS if config[name] is not None}
    values.update(overrides)  # unset (None) values fall back to the variant's defaults
    if not values.get("k_start"):
        values["k_start"] = values["k"]
    values["total_steps"] = config.steps
    return values


def run_spec(config, workdir: str, d: int, name: str | None = None, **overrides) -> RunSpec:
    """Validates a run's config (one clear ValueError per bad value) and resolves it."""
    if config.steps <= 0 or config.batch_size <= 0:
        raise ValueError(
            f"steps and batch_size must be positive, got {config.steps}, {config.batch_size}"
        )
    resample = tuple(int(s) for s in str(config.resample_steps).split(",") if s.strip())
    hp = hparams_from(config, **{k: v for k, v in overrides.items() if k != "seed"})
    sae_cfg = sae_config_from(config, d, k=max(hp["k"], hp["k_start"]))
    typed = artifact.typed_hparams(hp)
    sae_step.validate_hparams(sae_cfg, sae_step.default_hparams(sae_cfg, **typed))
    name = name or config.name or config.variant
    return RunSpec(
        name=name,
        run_dir=os.path.join(workdir, "sae", name),
        sae_cfg=sae_cfg,
        hparams=hp,
        steps=config.steps,
        batch_size=config.batch_size,
        seed=int(overrides.get("seed", config.seed)),
        resample_steps=resample,
    )


def device_hparams(spec: RunSpec) -> dict:
    return sae_step.default_hparams(spec.sae_cfg, **artifact.typed_hparams(spec.hparams))


def compile_step(sae_cfg):
    return jax.jit(functools.partial(sae_step.train_step, cfg=sae_cfg), donate_argnums=0)


def k_settled_step(spec: RunSpec) -> int | None:
    """The first step from which an annealed k (k_start > k) stays at its final k, else None.

    From then on the step is compiled for the final k: top_k is compiled for a static bound and
    a larger bound (k_start) costs the whole run its price; the selected latents are the same.
    """
    hp = spec.hparams
    if spec.sae_cfg.variant not in sae_model.TOPK_FAMILY or hp["k_start"] <= hp["k"]:
        return None
    return math.ceil(hp.get("k_anneal_frac", 0.0) * spec.steps)


def check_finite(name: str, step: int, metrics: dict) -> None:
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"SAE run '{name}': loss is {loss} at step {step}; the last good checkpoint is kept. "
            "Lower lr or the penalty coefficient."
        )


def train_sae(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains one SAE (resuming from its checkpoints) and writes its summary."""
    t_start = time.time()
    st = artifact.training_store(config, workdir)
    spec = run_spec(config, workdir, st.d)
    summary_path = os.path.join(spec.run_dir, "summary.json")
    if os.path.exists(summary_path):
        logging.info("SAE run %s already finished; nothing to do", spec.name)
        return metrics_io.finish_summary(summary_path, metrics_io.read_json(summary_path))
    record_config(spec, config, st.norm_scale)
    data_seed = config.data_seed if config.data_seed >= 0 else spec.seed
    reader = reader_lib.ActivationReader(st, _reader_config(config, data_seed))
    eval_ND = reader.eval_rows_array()

    hp = device_hparams(spec)
    state = sae_step.init_state(spec.sae_cfg, jax.random.key(spec.seed))
    ckpt = checkpoint.Checkpointer(
        os.path.join(spec.run_dir, "checkpoints"), save_every=config.checkpoint_every
    )
    restored = ckpt.restore(checkpoint.abstract_like(state))
    if restored is not None:
        state = restored[0]
        logging.info("resuming SAE %s from checkpoint at step %d", spec.name, int(state["step"]))
    start = int(state["step"])
    writer = metrics_io.MetricsWriter(os.path.join(spec.run_dir, "metrics.jsonl"), start)
    step_fn = compile_step(spec.sae_cfg)
    settled = k_settled_step(spec)
    settled_step_fn = (compile_step(dataclasses.replace(spec.sae_cfg, k=int(spec.hparams["k"])))
                       if settled is not None else step_fn)
    resample_fn = jax.jit(functools.partial(sae_step.resample_dead, cfg=spec.sae_cfg))
    progress = _Progress(spec, config.log_every, writer, start)

    batches = reader.iterate(start, device_put=True)
    try:
        for step in range(start, spec.steps):
            x_BD = next(batches)
            if step in spec.resample_steps and spec.sae_cfg.variant == "towards_2023":
                key = jax.random.fold_in(jax.random.key(spec.seed), step)
                state = resample_fn(state, x_BD, key, hp=hp)
                logging.info("step %d: resampled dead latents", step)
            fn = settled_step_fn if settled is not None and step >= settled else step_fn
            state, metrics = fn(state, x_BD, hp)
            progress.dispatched(step, metrics)
            done = step + 1
            if done % config.checkpoint_every == 0 or done == spec.steps:
                check_finite(spec.name, step, jax.device_get(metrics))  # never save a NaN state
                ckpt.save(done, state, {"step": done, "name": spec.name}, force=True)
        progress.flush()
    finally:
        batches.close()
        ckpt.close()
        reader.close()

    return finish_run(spec, state["params"], hp, eval_ND, progress.summary(), t_start)


def finish_run(spec: RunSpec, params, hp, eval_ND, train_stats: dict, t_start: float) -> dict:
    """Held-out evaluation, feature densities and the run's summary.json."""
    final_hp = sae_step.scheduled(hp, spec.steps)
    metrics, density_F = sae_metrics.evaluate(spec.sae_cfg, params, final_hp, eval_ND)
    np.save(os.path.join(spec.run_dir, "feature_density.npy"), density_F)
    summary = {
        "name": spec.name,
        "variant": spec.sae_cfg.variant,
        "d": spec.sae_cfg.d,
        "d_sae": spec.sae_cfg.d_sae,
        "steps": spec.steps,
        "tokens": spec.steps * spec.batch_size,
        **metrics,
        **train_stats,
        "hparams": {k: float(v) for k, v in jax.device_get(hp).items()},
        # batchtopk variants: the inference threshold θ the held-out metrics above encoded with
        **({"threshold": float(params["threshold"])} if "threshold" in params else {}),
        "seed": spec.seed,
        "wall_s": time.time() - t_start,
    }
    return metrics_io.finish_summary(os.path.join(spec.run_dir, "summary.json"), summary)


def record_config(spec: RunSpec, config, norm_scale: float) -> None:
    """Writes the run's config.json: what trained it, and all that using it needs (the SAE's
    shape, final hyper-parameters, hook and the store's norm_scale: sae/artifact.py)."""
    path = os.path.join(spec.run_dir, "config.json")
    wanted = {
        "sae": json.loads(config.to_json()),
        "sae_config": dataclasses.asdict(spec.sae_cfg),
        "hparams": spec.hparams,
        "seed": spec.seed,
        "hook": config.hook,
        "norm_scale": float(norm_scale),
    }
    wanted["sae"].pop("sweep", None)
    if os.path.exists(path):
        diff = metrics_io.config_difference(metrics_io.read_json(path),
                                            json.loads(json.dumps(wanted)))
        if diff:
            raise ValueError(
                f"{spec.run_dir} holds an SAE run with a different config ({diff}); pick "
                "another --config.name or delete that folder"
            )
    metrics_io.write_json_atomic(path, wanted)


def _reader_config(config, seed: int) -> reader_lib.ReaderConfig:
    return reader_lib.ReaderConfig(
        batch_size=config.batch_size,
        seed=seed,
        shuffle_blocks=config.shuffle_blocks,
        prefetch=config.prefetch,
        eval_rows=config.eval_rows,
    )


class _Progress:
    """Checks, logs and times one run's metrics, fetched one step late (see LaggedMetrics)."""

    def __init__(self, spec: RunSpec, log_every: int, writer, start: int):
        self.spec, self.log_every, self.writer, self.start = spec, log_every, writer, start
        self.last = {}
        self.lagged = metrics_io.LaggedMetrics(spec.steps, self._report)
        self.dispatched, self.flush = self.lagged.dispatched, self.lagged.flush

    def _report(self, step: int, metrics: dict, steps_per_s: float, eta: str) -> None:
        check_finite(self.spec.name, step, metrics)
        self.last = metrics
        done = step + 1
        if done % self.log_every and done != self.spec.steps:
            return
        logging.info(
            "sae %s step %d/%d loss %.4f mse %.4f ev %.3f l0 %.1f dead %.3f | %.0f tok/s | eta %s",
            self.spec.name,
            done,
            self.spec.steps,
            metrics["loss"],
            metrics["mse"],
            metrics["explained_variance"],
            metrics["l0"],
            metrics["dead_fraction"],
            steps_per_s * self.spec.batch_size,
            eta,
        )
        self.writer.write(done, tokens_per_s=steps_per_s * self.spec.batch_size, **metrics)

    def summary(self) -> dict:
        lagged = self.lagged
        rate = lagged.timed_steps / lagged.elapsed if lagged.elapsed else 0.0
        return {
            "resumed_from_step": self.start,
            "tokens_per_s": rate * self.spec.batch_size,
            "train_loss": float(self.last.get("loss", float("nan"))),
        }
