"""GPT training: a pure jitted step, evaluation, and the resumable training loop of the LM stage."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from monosem_jax import checkpoint, metrics_io, parallel, stage_config
from monosem_jax.corpus import dataset, tokenizer
from monosem_jax.gpt import context_probe, data
from monosem_jax.gpt import model as gpt_model
from monosem_jax.gpt import sample as gpt_sample


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
                    "checkpoint_every", "max_to_keep", "learning_rate", "grad_clip")
        stage_config.positive(self, positive, "train.")
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


def write_samples(path, tok, params, model_cfg, cfg: TrainConfig) -> list[str]:
    """Stories sampled from the start-of-document token, written one per block."""
    eot = tokenizer.eot_id(tok)
    prompt_BL = np.full((cfg.num_samples, 1), eot, np.int32)
    out_BL = gpt_sample.sample(
        model_cfg,
        params,
        prompt_BL,
        jnp.int32(1),
        jax.random.key(cfg.seed + 1),
        num_new=cfg.sample_len,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
    )
    texts = []
    for row in np.asarray(out_BL)[:, 1 : 1 + cfg.sample_len].tolist():
        if eot in row:  # a sample ends at its end-of-text token
            row = row[: row.index(eot)]
        texts.append(tok.decode(row))
    with open(path, "w") as f:
        f.write("\n\n".join(f"--- sample {i} ---\n{t}" for i, t in enumerate(texts)) + "\n")
    return texts


def _check_finite(step: int, metrics: dict) -> None:
    for name in ("loss", "grad_norm"):
        if not math.isfinite(float(metrics[name])):
            raise FloatingPointError(
                f"{name} is {float(metrics[name])} at step {step}; the last good checkpoint is "
                "kept. Lower lm.train.learning_rate or check the data."
            )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The LM stage: trains (resuming from `workdir/lm/checkpoints`) and writes the summary."""
    t_start = time.time()
    model_cfg, cfg = configs_from(config)
    lm_dir = os.path.join(workdir, "lm")
    summary_path = os.path.join(lm_dir, "summary.json")
    finished = metrics_io.finished_summary(summary_path, "LM stage")
    if finished is not None:
        return finished

    data_dir = os.path.join(workdir, "data")
    meta = dataset.load_meta(data_dir)
    if meta["vocab_size"] > model_cfg.vocab_size:
        raise ValueError(
            f"the tokenizer has {meta['vocab_size']} tokens but model.vocab_size is "
            f"{model_cfg.vocab_size}; set model.vocab_size >= {meta['vocab_size']}"
        )
    train_split = dataset.load_split(data_dir, "train")
    eval_split = dataset.load_split(data_dir, "eval")
    tok = tokenizer.load_tokenizer(os.path.join(workdir, "tokenizer.json"))
    length = model_cfg.context_len
    eval_WL1 = data.eval_windows(
        eval_split.tokens_N, length=length, max_tokens=cfg.eval_tokens, multiple=cfg.batch_size
    )

    # Later stages (capture, eval, steer) rebuild the model from this file and the checkpoint.
    metrics_io.write_json_atomic(os.path.join(lm_dir, "model.json"), dataclasses.asdict(model_cfg))
    mesh = parallel.make_mesh()
    state = jax.device_put(init_state(model_cfg, cfg), parallel.replicated(mesh))
    ckpt = checkpoint.Checkpointer(
        os.path.join(lm_dir, "checkpoints"),
        save_every=cfg.checkpoint_every,
        max_to_keep=cfg.max_to_keep,
    )
    restored = ckpt.restore(checkpoint.abstract_like(state))
    if restored is not None:
        state, _ = restored
        logging.info("resuming LM training from checkpoint at step %d", int(state["step"]))
    start_step = int(state["step"])
    writer = metrics_io.MetricsWriter(os.path.join(lm_dir, "metrics.jsonl"), start_step)
    step_fn = compile_train_step(model_cfg, cfg)
    tokens_per_step = cfg.batch_size * length

    last = {"loss": float("nan")}

    def report(step, metrics, steps_per_s, eta):
        _check_finite(step, metrics)
        last["loss"] = float(metrics["loss"])
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            logging.info(
                "step %d/%d loss %.4f grad_norm %.3f lr %.2e | %.0f tok/s | eta %s",
                done,
                cfg.steps,
                metrics["loss"],
                metrics["grad_norm"],
                metrics["lr"],
                steps_per_s * tokens_per_step,
                eta,
            )
            writer.write(done, tokens_per_s=steps_per_s * tokens_per_step, **metrics)

    lagged = metrics_io.LaggedMetrics(cfg.steps, report)
    for step in range(start_step, cfg.steps):
        batch = data.train_batch(
            train_split.tokens_N,
            seed=cfg.seed,
            step=step,
            batch_size=cfg.batch_size,
            length=length,
        )
        state, metrics = step_fn(state, parallel.global_batch(mesh, batch))
        lagged.dispatched(step, metrics)
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            _check_finite(step, jax.device_get(metrics))  # never checkpoint a NaN state
            ckpt.save(done, state, {"step": done}, force=done == cfg.steps)
        if done % cfg.eval_every == 0 and done < cfg.steps:
            eval_loss = evaluate(state["params"], eval_WL1, model_cfg, cfg.batch_size, mesh)
            logging.info("step %d eval_loss %.4f", done, eval_loss)
            writer.write(done, eval_loss=eval_loss)
    lagged.flush()
    ckpt.close()

    eval_loss = evaluate(state["params"], eval_WL1, model_cfg, cfg.batch_size, mesh)
    writer.write(cfg.steps, eval_loss=eval_loss)
    _check_finite(cfg.steps, {"loss": eval_loss, "grad_norm": 0.0})
    samples = write_samples(
        os.path.join(lm_dir, "samples.txt"), tok, state["params"], model_cfg, cfg
    )
    logging.info("sample: %s", samples[0][:300] if samples else "")
    summary = {
        "params": gpt_model.num_params(state["params"]),
        "steps": cfg.steps,
        "resumed_from_step": start_step,
        "tokens": cfg.steps * tokens_per_step,
        "train_loss": last["loss"],
        "eval_loss": eval_loss,
        "eval_tokens": int(eval_WL1.shape[0] * length),
        "unigram_entropy": dataset.unigram_entropy(eval_split.tokens_N, meta["vocab_size"]),
        "tokens_per_s": lagged.timed_steps * tokens_per_step / lagged.elapsed
        if lagged.elapsed > 0
        else 0.0,
        "wall_s": time.time() - t_start,
    }
    summary["eval_over_unigram"] = summary["eval_loss"] / summary["unigram_entropy"]
    # Does the model use its context? (experiments/topic_context_gain.py prints the same.)
    summary["loss_by_position"] = context_probe.loss_by_position(
        model_cfg, state["params"], eval_WL1, cfg.batch_size)
    if model_cfg.context_len + 1 >= context_probe.ProbeConfig().score_end:
        summary.update(context_probe.topic_context_gain(
            model_cfg, state["params"], eval_split, meta.get("concepts") or ()))
    else:  # the probe's windows (64 tokens) do not fit a smoke-sized context
        summary["topic_context_gain"] = None
    return metrics_io.finish_summary(summary_path, summary)
