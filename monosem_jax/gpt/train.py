"""The LM stage: the resumable training loop around gpt/step.py, evaluation and samples."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from monosem_jax import checkpoint, distributed, metrics_io, observe, parallel, workdir_lock
from monosem_jax.corpus import dataset, tokenizer
from monosem_jax.gpt import context_probe, data
from monosem_jax.gpt import model as gpt_model
from monosem_jax.gpt import sample as gpt_sample
from monosem_jax.gpt import step as gpt_step


def write_samples(path, tok, params, model_cfg, cfg: gpt_step.TrainConfig) -> list[str]:
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
    if not distributed.is_primary():
        return texts
    with open(path, "w") as f:
        f.write("\n\n".join(f"--- sample {i} ---\n{t}" for i, t in enumerate(texts)) + "\n")
    return texts


def _logged_at(path: str, step: int) -> dict:
    """The metrics rows of `step` in metrics.jsonl, merged (none where process 0 writes it)."""
    merged = {}
    if os.path.exists(path):
        with open(path) as f:
            for row in map(json.loads, filter(str.strip, f)):
                if row.get("step") == step:
                    merged.update(row)
    return merged


def _check_finite(step: int, metrics: dict) -> None:
    for name in ("loss", "grad_norm"):
        if not math.isfinite(float(metrics[name])):
            raise FloatingPointError(
                f"{name} is {float(metrics[name])} at step {step}; the last good checkpoint is "
                "kept. Lower lm.train.learning_rate or check the data."
            )


@workdir_lock.writer(lambda config: "lm")
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The LM stage: trains (resuming from `workdir/lm/checkpoints`) and writes the summary."""
    t_start = time.time()
    model_cfg, cfg = gpt_step.configs_from(config)
    profile_steps = observe.check_profile_steps(config.get("profile_steps", 0))
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
    if distributed.is_primary():
        metrics_io.write_json_atomic(os.path.join(lm_dir, "model.json"),
                                     dataclasses.asdict(model_cfg))
    mesh = parallel.make_mesh()
    replicated = parallel.replicated(mesh)
    state = jax.tree.map(lambda a: parallel.place(a, replicated),
                         jax.device_get(gpt_step.init_state(model_cfg, cfg)))
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
    writer = metrics_io.MetricsWriter(os.path.join(lm_dir, "metrics.jsonl"), start_step,
                                      tensorboard=os.path.join(lm_dir, "tensorboard"))
    profile = observe.ProfileWindow(os.path.join(lm_dir, "profile"), profile_steps, start_step,
                                    cfg.steps)
    step_fn = gpt_step.compile_train_step(model_cfg, cfg)
    tokens_per_step = cfg.batch_size * length

    # A run killed after its last checkpoint resumes there and runs no step: its training loss
    # and final evaluation are those it logged before the kill.
    logged = _logged_at(writer.path, cfg.steps) if start_step == cfg.steps else {}
    last = {"loss": logged.get("loss", float("nan"))}

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
    with writer, profile:  # closes the event files; stops a trace an error left open
        for step in range(start_step, cfg.steps):
            batch = data.train_batch(
                train_split.tokens_N,
                seed=cfg.seed,
                step=step,
                batch_size=cfg.batch_size,
                length=length,
            )
            profile.before(step)
            state, metrics = step_fn(state, parallel.global_batch(mesh, batch))
            lagged.dispatched(step, metrics)
            profile.after(step, (state, metrics))
            done = step + 1
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                _check_finite(step, jax.device_get(metrics))  # never checkpoint a NaN state
                ckpt.save(done, state, {"step": done}, force=done == cfg.steps)
            if done % cfg.eval_every == 0 and done < cfg.steps:
                eval_loss = gpt_step.evaluate(state["params"], eval_WL1, model_cfg,
                                              cfg.batch_size, mesh)
                logging.info("step %d eval_loss %.4f", done, eval_loss)
                writer.write(done, eval_loss=eval_loss)
        lagged.flush()
        ckpt.close()

        eval_loss = gpt_step.evaluate(state["params"], eval_WL1, model_cfg, cfg.batch_size, mesh)
        if "eval_loss" not in logged:
            writer.write(cfg.steps, eval_loss=eval_loss)
    _check_finite(cfg.steps, {"loss": eval_loss, "grad_norm": 0.0})
    # The analyses below run whole on each process's own device (a few batches each).
    params = parallel.to_host(state["params"]) if distributed.is_multiprocess() else state["params"]
    samples = write_samples(os.path.join(lm_dir, "samples.txt"), tok, params, model_cfg, cfg)
    logging.info("sample: %s", samples[0][:300] if samples else "")
    summary = {
        "params": gpt_model.num_params(params),
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
        model_cfg, params, eval_WL1, cfg.batch_size)
    if model_cfg.context_len + 1 >= context_probe.ProbeConfig().score_end:
        summary.update(context_probe.topic_context_gain(
            model_cfg, params, eval_split, meta.get("concepts") or ()))
    else:  # the probe's windows (64 tokens) do not fit a smoke-sized context
        summary["topic_context_gain"] = None
    return metrics_io.finish_summary(summary_path, summary)
