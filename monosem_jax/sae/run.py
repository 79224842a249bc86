"""An SAE run's definition and record: the stage's config boundary, each member's resolved spec,
its recorded config.json and its summary.json.

`TrainConfig.from_config` is the only place the SAE stage reads its ConfigDict (monosem-train-sae
and monosem-sweep both start there); everything after takes the frozen dataclass.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import jax
import ml_collections
import numpy as np

from monosem_jax import config_values, distributed, metrics_io, observe, stage_config
from monosem_jax.activations import reader as reader_lib
from monosem_jax.sae import artifact
from monosem_jax.sae import metrics as sae_metrics
from monosem_jax.sae import model as sae_model
from monosem_jax.sae import step as sae_step

SOURCES = ("store", "lm")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The SAE stage's settings (configs/sae/default.py documents each), validated."""

    name: str
    variant: str
    hook: str
    store: str
    d_sae: int
    steps: int
    batch_size: int
    seed: int
    data_seed: int  # -1: the seed
    hparams: dict  # the config's hyper-parameters (step.CONFIG_HPARAMS) that are set
    k_aux: int
    dead_steps: int
    jumprelu_bandwidth: float
    sparse_capacity: int
    matmul_dtype: str
    prefixes: tuple[int, ...]
    model_parallel: int
    source: str
    resample_steps: tuple[int, ...]
    eval_rows: int
    shuffle_blocks: int
    prefetch: int
    log_every: int
    checkpoint_every: int
    recorded: dict  # the config as JSON (without the sweep), recorded in each run's config.json
    # source "lm" only (sae/lm_feed.py); defaults for configs written before it existed
    lm_buffer_batches: int = 8
    lm_positions_per_context: int = 0
    lm_exclude_first: bool = True
    profile_steps: int = 0  # steps traced by jax.profiler (observe.ProfileWindow); 0 = off

    def __post_init__(self):
        stage_config.path_component("name", self.name, allow_empty=True)
        observe.check_profile_steps(self.profile_steps)
        capacity = ">= 0 (0 = the dense step), or -1 (automatic)"
        stage_config.number("sparse_capacity", self.sparse_capacity, capacity)
        stage_config.check(self.sparse_capacity >= -1, "sparse_capacity", self.sparse_capacity,
                           capacity)
        # Read only by some variants (matryoshka, towards_2023), checked for all: a typo is an
        # error whatever the variant.
        stage_config.check(all(0 < p < stage_config.INT_LIMIT for p in self.prefixes),
                           "prefixes", self.prefixes, "prefix sizes > 0 (up to d_sae)")
        stage_config.check(all(0 <= s < stage_config.INT_LIMIT for s in self.resample_steps),
                           "resample_steps", self.resample_steps, "steps >= 0")
        stage_config.one_of("matmul_dtype", self.matmul_dtype, sae_model.MATMUL_DTYPES)
        stage_config.positive(self, ("steps", "batch_size", "d_sae", "log_every",
                                     "checkpoint_every", "shuffle_blocks", "model_parallel",
                                     "k_aux", "dead_steps", "eval_rows", "jumprelu_bandwidth"))
        stage_config.non_negative(self, ("seed", "prefetch"))
        stage_config.number("data_seed", self.data_seed, ">= 0, or -1 (the seed)")
        stage_config.check(self.data_seed >= -1, "data_seed", self.data_seed,
                           ">= 0, or -1 (the seed)")
        stage_config.check(self.d_sae % self.model_parallel == 0, "model_parallel",
                           self.model_parallel, f"a divisor of d_sae ({self.d_sae})")
        stage_config.one_of("source", self.source, SOURCES)
        stage_config.path_or_spec("store", self.store)
        stage_config.positive(self, ("lm_buffer_batches",))
        stage_config.non_negative(self, ("lm_positions_per_context",), note="0 = all")
        stage_config.one_of("variant", self.variant, sae_model.VARIANTS)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> TrainConfig:
        recorded = json.loads(config.to_json())
        recorded.pop("sweep", None)
        return stage_config.from_config(
            cls, config,
            hparams={k: config[k] for k in sae_step.CONFIG_HPARAMS if config[k] is not None},
            prefixes=config_values.int_tuple("prefixes", config.get("prefixes", ())),
            resample_steps=config_values.int_tuple("resample_steps", config.resample_steps),
            recorded=recorded,
        )

    def reader_config(self, seed: int) -> reader_lib.ReaderConfig:
        return reader_lib.ReaderConfig(
            batch_size=self.batch_size,
            seed=seed,
            shuffle_blocks=self.shuffle_blocks,
            prefetch=self.prefetch,
            eval_rows=self.eval_rows,
        )

    def training_store(self, workdir: str):
        return artifact.training_store(self.store, self.hook, workdir)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything one SAE run (alone or a sweep member) needs, resolved from the config."""

    name: str
    run_dir: str
    sae_cfg: sae_model.SAEConfig
    hparams: dict  # python numbers (k_start resolved)
    steps: int
    batch_size: int
    seed: int

    def device_hparams(self) -> dict:
        return sae_step.default_hparams(self.sae_cfg, **artifact.typed_hparams(self.hparams))


def run_spec(cfg: TrainConfig, workdir: str, d: int, name: str | None = None,
             **overrides) -> RunSpec:
    """Resolves one run (hyper-parameter `overrides` and `seed` for sweep members); a bad
    hyper-parameter is one clear ValueError."""
    hp = {**cfg.hparams, **{k: v for k, v in overrides.items() if k != "seed"}}
    if not hp.get("k_start"):  # unset values fall back to the variant's defaults
        hp["k_start"] = hp["k"]
    hp["total_steps"] = cfg.steps
    sae_cfg = sae_model.SAEConfig(
        variant=cfg.variant,
        d=d,
        d_sae=cfg.d_sae,
        k=max(hp["k"], hp["k_start"]),
        k_aux=min(cfg.k_aux, cfg.d_sae),
        dead_steps=cfg.dead_steps,
        jumprelu_bandwidth=cfg.jumprelu_bandwidth,
        sparse_capacity=cfg.sparse_capacity,
        matmul_dtype=cfg.matmul_dtype,
        prefixes=cfg.prefixes,
    )
    spec = RunSpec(
        name=name or cfg.name or cfg.variant,
        run_dir="",
        sae_cfg=sae_cfg,
        hparams=hp,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        seed=int(overrides.get("seed", cfg.seed)),
    )
    sae_step.validate_hparams(sae_cfg, spec.device_hparams())
    return dataclasses.replace(spec, run_dir=os.path.join(workdir, "sae", spec.name))


def check_hparams(cfg: TrainConfig) -> None:
    """The run's SAE shape and hyper-parameters checked as `run_spec` checks them, before any
    input is opened (the input's width does not enter the checks)."""
    run_spec(cfg, "", d=1)


def k_settled_step(spec: RunSpec) -> int | None:
    """The first step from which an annealed k (k_start > k) stays at its final k, else None.

    From then on the step is compiled for the final k: top_k is compiled for a static bound and
    a larger bound (k_start) costs the whole run its price; the selected latents are the same.
    """
    hp = spec.hparams
    if spec.sae_cfg.variant not in sae_model.TOPK_FAMILY or hp["k_start"] <= hp["k"]:
        return None
    return math.ceil(hp.get("k_anneal_frac", 0.0) * spec.steps)


def check_finite(name: str, step: int, loss) -> None:
    loss = float(loss)
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"SAE run '{name}': loss is {loss} at step {step}; the last good checkpoint is kept. "
            "Lower lr or the penalty coefficient."
        )


def record_config(spec: RunSpec, cfg: TrainConfig, norm_scale: float) -> None:
    """Writes the run's config.json: what trained it, and all that using it needs (the SAE's
    shape, final hyper-parameters, hook and the store's norm_scale: sae/artifact.py). A run
    folder that holds another config is a clear error, never overwritten."""
    path = os.path.join(spec.run_dir, "config.json")
    wanted = {
        "sae": cfg.recorded,
        "sae_config": dataclasses.asdict(spec.sae_cfg),
        "hparams": spec.hparams,
        "seed": spec.seed,
        "hook": cfg.hook,
        "norm_scale": float(norm_scale),
    }
    if os.path.exists(path):
        diff = metrics_io.config_difference(metrics_io.read_json(path),
                                            json.loads(json.dumps(wanted)))
        if diff:
            raise ValueError(
                f"{spec.run_dir} holds an SAE run with a different config ({diff}); pick "
                "another --config.name or delete that folder"
            )
    if distributed.is_primary():
        metrics_io.write_json_atomic(path, wanted)


def finish_run(spec: RunSpec, params, hp, eval_ND, train_stats: dict, t_start: float) -> dict:
    """Held-out evaluation, feature densities and the run's summary.json."""
    final_hp = sae_step.scheduled(hp, spec.steps)
    metrics, density_F = sae_metrics.evaluate(spec.sae_cfg, params, final_hp, eval_ND)
    if distributed.is_primary():
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
