"""GPT optimisation: the stage's training settings, the optimizer and its schedule, the pure
train step and evaluation (the loop that drives them: gpt/train.py)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from monosem_jax import parallel, stage_config
from monosem_jax.gpt import model as gpt_model


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and loop settings (see monosem_jax/configs/gpt/*.py for what each means)."""

    seed: int = 0
    steps: int = 400
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 40
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0
    log_every: int = 20
    eval_every: int = 100
    eval_tokens: int = 65536
    checkpoint_every: int = 50
    max_to_keep: int = 2
    num_samples: int = 4
    sample_len: int = 100
    temperature: float = 0.8
    top_k: int = 40

    def __post_init__(self):
        positive = ("steps", "batch_size", "log_every", "eval_every", "eval_tokens",
                    "checkpoint_every", "max_to_keep", "learning_rate", "grad_clip", "num_samples",
                    "sample_len")
        stage_config.positive(self, positive, "train.")
        stage_config.non_negative(self, ("seed",), "train.")
        stage_config.non_negative(self, ("temperature",), "train.", "0 = greedy")
        stage_config.non_negative(self, ("top_k",), "train.", "0 = all")
        for beta in ("b1", "b2"):  # Adam's moment decays
            stage_config.check(0 <= getattr(self, beta) < 1, f"train.{beta}",
                               getattr(self, beta), "in [0, 1)")
        stage_config.check(0 <= self.warmup_steps < self.steps, "train.warmup_steps",
                           self.warmup_steps, f"in [0, train.steps={self.steps})")
        stage_config.check(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", self.min_lr_ratio,
                           "in [0, 1]")
        stage_config.non_negative(self, ("weight_decay",), "train.")


def configs_from(config: ml_collections.ConfigDict) -> tuple[gpt_model.GPTConfig, TrainConfig]:
    """The frozen model and train configs of an LM ConfigDict (the jit boundary)."""
    return gpt_model.GPTConfig(**config.model.to_dict()), TrainConfig(**config.train.to_dict())


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warm-up to the peak, then cosine decay to `min_lr_ratio` × peak."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.steps,
        end_value=cfg.learning_rate * cfg.min_lr_ratio,
    )


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with global-norm clipping; 2-D weights decay (incl. the token and position
    embeddings, as in nanoGPT), biases and LayerNorm parameters don't."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim == 2, params)
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(
            learning_rate_schedule(cfg),
            b1=cfg.b1,
            b2=cfg.b2,
            weight_decay=cfg.weight_decay,
            mask=decay_mask,
        ),
    )


def init_state(model_cfg: gpt_model.GPTConfig, train_cfg: TrainConfig) -> dict:
    """The training state as a plain dict: params, optimiser state, step."""
    params = gpt_model.init_params(model_cfg, jax.random.key(train_cfg.seed))
    return {
        "params": params,
        "opt_state": make_optimizer(train_cfg).init(params),
        "step": jnp.zeros((), jnp.int32),
    }


def loss_fn(params, tokens_BL1, model_cfg: gpt_model.GPTConfig) -> jax.Array:
    logits_BLV, _ = gpt_model.forward(model_cfg, params, tokens_BL1[:, :-1])
    return gpt_model.next_token_loss(logits_BLV, tokens_BL1[:, 1:])


def train_step(state: dict, tokens_BL1: jax.Array, *, model_cfg, train_cfg) -> tuple[dict, dict]:
    """One AdamW update; returns the new state and on-device metrics."""
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], tokens_BL1, model_cfg)
    updates, opt_state = make_optimizer(train_cfg).update(
        grads, state["opt_state"], state["params"]
    )
    new_state = {
        "params": optax.apply_updates(state["params"], updates),
        "opt_state": opt_state,
        "step": state["step"] + 1,
    }
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "lr": learning_rate_schedule(train_cfg)(state["step"]),
    }
    return new_state, metrics


def compile_train_step(model_cfg, train_cfg):
    return jax.jit(
        functools.partial(train_step, model_cfg=model_cfg, train_cfg=train_cfg), donate_argnums=0
    )


@functools.partial(jax.jit, static_argnames="model_cfg")
def _eval_batch_loss(params, tokens_BL1, model_cfg):
    return loss_fn(params, tokens_BL1, model_cfg)


def evaluate(params, windows_WL1: np.ndarray, model_cfg, batch_size: int, mesh) -> float:
    """Mean next-token loss over fixed eval windows (equal-size batches, so a plain mean)."""
    losses = [
        _eval_batch_loss(
            params, parallel.global_batch(mesh, windows_WL1[i : i + batch_size]), model_cfg
        )
        for i in range(0, windows_WL1.shape[0], batch_size)
    ]
    return float(np.mean(jax.device_get(losses)))
