"""Held-out evaluation of one SAE run through the model: the `monosem-eval` stage.

On the eval split's context windows (never seen by the LM's or the SAE's training) one jitted
step per batch runs the LM three times (clean, SAE spliced in at the hook, hook zero-ablated)
and returns sums: reconstruction and sparsity, CE and KL, SAEBench's core metrics
(`saebench.py`), streamed correlations of features with the MLP neurons of the hook's block and
with the hook's own dimensions, and per-threshold true-positive counts of every feature and
every neuron against the planted concept labels. The host adds them up in float64, so memory
does not grow with `max_tokens`: one batch, the [features, neurons + dims] cross-products, and
the token sample (`threshold_sample_tokens`) that sets each unit's detection thresholds and
correlation shift in a short first pass. On a labelled corpus a last pass over a window sample
(`probe_tokens`) feeds the probes (`probes.py`): per concept a logistic probe on the hook's
activations (the ceiling) and k-sparse probes on SAE latents, both scored on held-out windows.

Several processes (jax.distributed) evaluate as one: the mesh spans every process's devices,
each global batch's contexts are split over them (each process copies only its own devices'
contexts, `_batches`), so every context is computed and counted once and the jitted sums come
back already reduced over all processes; per-token samples (thresholds, probes) are gathered
whole to every process (parallel.to_host). Every process then holds the same totals and runs the
same host code; only process 0 writes the files. The figures equal a one-process run's on the
same global mesh to float tolerance, except the probes' F1: XLA:CPU compiles the L-BFGS fit
differently for processes with different device counts, and the smoke probes (100 steps, weak
L2) amplify those last bits.

Outputs, in `W/eval/`: `<name>.json` (the summary, also the last stdout line; SAEBench's
nested metrics under "saebench_core"), `<name>_density.png` (feature density histogram) and
`<name>_features.npz` (per-feature density, best neuron / residual correlations, SAEBench's
per-latent arrays). A rerun recomputes everything (about a minute on CPU for the default
pipeline, and deterministic) and overwrites these files.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from monosem_jax import batching, config_values, distributed, metrics_io, parallel, stage_config
from monosem_jax.analysis import features, probes, saebench
from monosem_jax.analysis import metrics as m
from monosem_jax.corpus import dataset
from monosem_jax.gpt import artifact as gpt_artifact
from monosem_jax.gpt import model as gpt_model
from monosem_jax.sae import artifact as sae_artifact
from monosem_jax.sae.artifact import TrainedSAE


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The evaluation's settings, validated (see configs/eval/default.py for each field)."""

    sae_name: str  # "" = the work dir's pipeline SAE
    split: str = "eval"
    max_tokens: int = 65536
    batch_size: int = 16
    exclude_first: bool = True
    threshold_rates: tuple[float, ...] = (0.5, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01,
                                          0.005, 0.002)
    threshold_sample_tokens: int = 8192
    recovered_f1: float = 0.8
    probe: probes.ProbeConfig = probes.ProbeConfig()

    def __post_init__(self):
        stage_config.one_of("split", self.split, dataset.SPLITS)
        stage_config.positive(self, ("batch_size", "threshold_sample_tokens"))
        stage_config.non_negative(self, ("max_tokens",), note="0 = all")
        stage_config.check(bool(self.threshold_rates)
                           and all(0 < r < 1 for r in self.threshold_rates),
                           "threshold_rates", self.threshold_rates, "fractions in (0, 1)")
        recovered_f1 = stage_config.number("recovered_f1", self.recovered_f1, "an F1 in (0, 1]")
        stage_config.check(0 < recovered_f1 <= 1, "recovered_f1", recovered_f1, "an F1 in (0, 1]")


def eval_config_from(config: ml_collections.ConfigDict) -> EvalConfig:
    """The frozen EvalConfig of a ConfigDict (one clear ValueError per bad value)."""
    return stage_config.from_config(
        EvalConfig, config,
        threshold_rates=config_values.float_tuple("threshold_rates", config.threshold_rates),
        probe=probes.probe_config_from(config),
    )


@dataclasses.dataclass(frozen=True)
class EvalStatic:
    """Hashable settings of the jitted batch functions."""

    model_cfg: gpt_model.GPTConfig
    hook: str
    mlp_hook: str
    first: int  # first position evaluated in each context
    with_concepts: bool


def mlp_hook_of(hook: str) -> str:
    """The MLP neurons (`hook_mlp_post`) of the block a hook belongs to."""
    match = re.match(r"blocks\.(\d+)\.", hook)
    if match is None:
        raise ValueError(f"cannot tell the block of hook {hook!r}")
    return f"blocks.{match.group(1)}.hook_mlp_post"


# The jitted functions take the SAE's norm_scale traced (a float32 array), beside the pytree
# whose own norm_scale is static: as a compile-time constant XLA would fold x·c/c and turn /c
# into ·(1/c), moving the last bits of the sums.


def _encode(st: EvalStatic, lm_params, sae: TrainedSAE, norm_scale, tokens_BL, valid_B):
    """Clean logits, hook acts [B, L, D], neurons [N, M], reported features [N, F], x̂ [B, L, D]
    and the mask [B, L]."""
    sae = dataclasses.replace(sae, norm_scale=norm_scale)
    logits_BLV, cap = gpt_model.forward(
        st.model_cfg, lm_params, tokens_BL, capture=(st.hook, st.mlp_hook)
    )
    x_BLD = cap[st.hook].astype(jnp.float32)
    neurons_NM = cap[st.mlp_hook].astype(jnp.float32).reshape(-1, st.model_cfg.d_mlp)
    feats_NF = sae_artifact.feature_acts(sae, x_BLD).reshape(-1, sae.sae_cfg.d_sae)
    xhat_BLD = sae_artifact.reconstruct(sae, x_BLD)
    length = tokens_BL.shape[1]
    mask_BL = (jnp.arange(length) >= st.first)[None] & valid_B[:, None]
    return logits_BLV, x_BLD, neurons_NM, feats_NF, xhat_BLD, mask_BL


@functools.partial(jax.jit, static_argnames="st")
def _sample_units(lm_params, sae: TrainedSAE, norm_scale, tokens_BL, valid_B, st: EvalStatic):
    """Reported features [N, F], units (neurons then hook dims) [N, M + D] and the mask [N]."""
    _, x_BLD, neurons_NM, feats_NF, _, mask_BL = _encode(
        st, lm_params, sae, norm_scale, tokens_BL, valid_B
    )
    units_NU = jnp.concatenate([neurons_NM, x_BLD.reshape(-1, x_BLD.shape[-1])], axis=1)
    return feats_NF, units_NU, mask_BL.reshape(-1)


@functools.partial(jax.jit, static_argnames="st")
def batch_sums(lm_params, sae: TrainedSAE, norm_scale, tokens_BL, valid_B, labels_BLC, aux,
               st: EvalStatic):
    """Every streamed sum of one batch (see the module docstring).

    valid_B masks padded contexts; aux holds the correlation shifts and the detection
    thresholds (`_thresholds_and_shifts`).
    """
    logits_BLV, x_BLD, neurons_NM, feats_NF, xhat_BLD, mask_BL = _encode(
        st, lm_params, sae, norm_scale, tokens_BL, valid_B
    )
    splice_1L1 = (jnp.arange(tokens_BL.shape[1]) >= st.first)[None, :, None]
    spliced_BLV, _ = gpt_model.forward(
        st.model_cfg, lm_params, tokens_BL,
        intervene={st.hook: lambda v: jnp.where(splice_1L1, xhat_BLD.astype(v.dtype), v)},
    )
    zeroed_BLV, _ = gpt_model.forward(
        st.model_cfg, lm_params, tokens_BL,
        intervene={st.hook: lambda v: jnp.where(splice_1L1, jnp.zeros_like(v), v)},
    )
    sums = m.lm_sums(logits_BLV, spliced_BLV, zeroed_BLV, tokens_BL, mask_BL)
    sums.update(saebench.core_sums(x_BLD, xhat_BLD, feats_NF.reshape(*mask_BL.shape, -1), mask_BL))
    mask_N = mask_BL.reshape(-1)
    x_ND = x_BLD.reshape(-1, x_BLD.shape[-1])
    # Reconstruction in SAE input units (as the SAE stage's summary reports mse).
    err_ND = jnp.where(mask_N[:, None], (x_ND - xhat_BLD.reshape(x_ND.shape)) * norm_scale, 0.0)
    xs_ND = jnp.where(mask_N[:, None], x_ND * norm_scale, 0.0)
    sums.update(
        sse=jnp.sum(err_ND**2),
        sum_sq=jnp.sum(xs_ND**2),
        sum_x_D=jnp.sum(xs_ND, axis=0),
        # Firing counts from SAEBench's sums (f != 0: the same as f > 0, every variant is >= 0).
        active=jnp.sum(sums["sb_fires_F"]),
        fires_F=sums["sb_fires_F"],
    )
    units_NU = jnp.concatenate([neurons_NM, x_ND], axis=1)
    sums.update(m.corr_chunk(feats_NF, units_NU, aux["shift_F"], aux["shift_U"], mask_N))
    if st.with_concepts:
        labels_NC = labels_BLC.reshape(-1, labels_BLC.shape[-1])
        feat = m.threshold_counts(feats_NF, aux["thresholds_FT"], labels_NC, mask_N)
        # Neurons and hook dims are signed: unit u + U detects "below", as -a > -t.
        signed_NO = jnp.concatenate([units_NU, -units_NU], axis=1)
        unit = m.threshold_counts(signed_NO, aux["thresholds_OT"], labels_NC, mask_N)
        sums.update(
            feat_tp_FTC=feat["tp_UTC"], feat_pos_FT=feat["pos_UT"], label_C=feat["label_C"],
            unit_tp_OTC=unit["tp_UTC"], unit_pos_OT=unit["pos_UT"],
        )
    return sums


@functools.partial(jax.jit, static_argnames="st")
def _hook_rows(lm_params, tokens_BL, valid_B, st: EvalStatic):
    """Hook activations [N, D] and the evaluated-position mask [N] (layers past the hook are
    dead code: XLA drops them)."""
    _, cap = gpt_model.forward(st.model_cfg, lm_params, tokens_BL, capture=(st.hook,))
    x_BLD = cap[st.hook].astype(jnp.float32)
    mask_BL = (jnp.arange(tokens_BL.shape[1]) >= st.first)[None] & valid_B[:, None]
    return x_BLD.reshape(-1, x_BLD.shape[-1]), mask_BL.reshape(-1)


_reported_acts = jax.jit(sae_artifact.feature_acts)


def _probe_concepts(lm_params, sae, windows_WL, labels_WL, concepts, cfg: EvalConfig, st, mesh,
                    table: list[dict]) -> dict:
    """Adds the probe columns to the concept table's rows; returns the summary's probe fields."""
    if windows_WL.shape[0] < 2:
        return {"probe_note": "a single eval window: no held-out part for the probes"}
    t_start = time.time()
    parts = []  # x_train, y_train, x_test, y_test
    for picked_W in probes.split_windows(windows_WL.shape[0], windows_WL.shape[1] - st.first,
                                         cfg.probe):
        xs, ys = [], []
        for tokens_BL, valid_B, labels_BLC in _batches(windows_WL[picked_W], labels_WL[picked_W],
                                                       len(concepts), cfg.batch_size, mesh):
            (x_ND, mask_N), labels_BLC = parallel.to_host(
                (_hook_rows(lm_params, tokens_BL, valid_B, st), labels_BLC)
            )
            xs.append(x_ND[mask_N])
            ys.append(labels_BLC.reshape(-1, len(concepts))[mask_N])
        parts += [np.concatenate(xs), np.concatenate(ys)]
    results = probes.concept_probes(lambda x_ND: _reported_acts(sae, x_ND), *parts, cfg.probe)
    probes.probe_fields(table, concepts, results, parts[1], parts[3], cfg.probe.ks)
    return probes.probe_summary(table, parts[0].shape[0], parts[2].shape[0], cfg.probe,
                                time.time() - t_start)


def concept_bits(labels_BL: np.ndarray, num_concepts: int) -> np.ndarray:
    """Bool [B, L, C] of uint32 concept bitmasks (bit c = concept c)."""
    bits_C = np.arange(num_concepts, dtype=np.uint32)
    return ((np.asarray(labels_BL, np.uint32)[..., None] >> bits_C[None, None]) & 1).astype(bool)


def _batches(windows_WL: np.ndarray, labels_WL: np.ndarray, num_concepts: int, batch_size: int,
             mesh):
    """(tokens [B, L], valid [B], labels [B, L, C]) split over 'data'; the last batch padded.

    Every process builds the whole batch (token windows are cheap) and copies only its own
    devices' contexts, so each context is computed, and counted, on exactly one device.
    """
    # One compiled shape; padded rows are masked out of every sum.
    for first, tokens_BL, n in batching.fixed_batches(windows_WL, batch_size):
        labels_BL, _ = batching.pad_rows(labels_WL[first : first + batch_size], batch_size)
        valid_B = batching.valid_rows(n, batch_size)
        batch = (tokens_BL, valid_B, concept_bits(labels_BL, num_concepts))
        yield tuple(parallel.place(x, parallel.data_sharding(mesh)) for x in batch)


def _thresholds_and_shifts(lm_params, sae: TrainedSAE, norm_scale, windows_WL, cfg: EvalConfig,
                           st, mesh):
    """Per-unit detection thresholds and correlation shifts from a strided token sample."""
    per_window = windows_WL.shape[1] - st.first
    count = min(windows_WL.shape[0], -(-cfg.threshold_sample_tokens // per_window))
    picked_W = np.unique(np.linspace(0, windows_WL.shape[0] - 1, count).round().astype(int))
    feats, units = [], []
    no_labels_WL = np.zeros(picked_W.shape + windows_WL.shape[1:], np.uint32)
    for tokens_BL, valid_B, _ in _batches(windows_WL[picked_W], no_labels_WL, 1, cfg.batch_size,
                                          mesh):
        feats_NF, units_NU, mask_N = parallel.to_host(
            _sample_units(lm_params, sae, norm_scale, tokens_BL, valid_B, st)
        )
        feats.append(feats_NF[mask_N])
        units.append(units_NU[mask_N])
    feats_NF, units_NU = np.concatenate(feats), np.concatenate(units)
    rates = cfg.threshold_rates
    # Features: "> 0" (fires) plus quantiles of their non-zero values.
    q_FT = m.positive_quantile_thresholds(feats_NF, rates)
    thresholds_FT = np.concatenate([np.zeros((q_FT.shape[0], 1), np.float32), q_FT], axis=1)
    thresholds_OT = m.quantile_thresholds(np.concatenate([units_NU, -units_NU], axis=1), rates)
    return {
        "thresholds_FT": thresholds_FT,
        "thresholds_OT": thresholds_OT,
        "shift_F": feats_NF.mean(0),
        "shift_U": units_NU.mean(0),
    }


def _no_concepts(unlabelled: bool) -> dict:
    """Concept fields of a corpus without planted-concept labels: null, with the reason."""
    reason = "the corpus has no concept labels" if unlabelled else "the corpus names no concepts"
    skipped = ("concept_f1", "concept_f1_neuron", "concepts_recovered_fraction",
               "concepts_recovered_fraction_neuron", "concept_table", "concepts_feature_beats_unit",
               "concepts_sparse_probe_k1_over_ceiling_ge_0_9")
    return {**dict.fromkeys(skipped), "concept_note": f"{reason} (e.g. real text); concept "
            "recovery skipped"}


def density_plot(path: str, density_F: np.ndarray, title: str) -> None:
    """Histogram of log10 firing frequency of the live features; dead ones counted in the title."""
    import matplotlib

    matplotlib.use("Agg")  # no display; the figure only goes to a file
    import matplotlib.pyplot as plt

    live_F = density_F[density_F > 0]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if live_F.size:
        ax.hist(np.log10(live_F), bins=50, color="tab:blue")
    ax.axvline(np.log10(m.DENSE_THRESHOLD), color="tab:red", ls="--", lw=1, label="dense (10%)")
    ax.set_xlabel("log10 activation frequency")
    ax.set_ylabel("features")
    dead = density_F.size - live_F.size
    ax.set_title(f"{title}\n{live_F.size} live, {dead} dead of {density_F.size}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluates W/sae/<config.sae_name> on held-out contexts and writes W/eval/<name>.json."""
    t_start = time.time()
    cfg = eval_config_from(config)
    mesh = parallel.make_mesh()  # every process's devices: contexts split over 'data'
    parallel.check_batch(mesh, cfg.batch_size)
    model_cfg, lm_params, lm_step = gpt_artifact.load_trained(workdir)
    sae = sae_artifact.load_sae(workdir, cfg.sae_name)  # "" = the pipeline's SAE
    data_dir = os.path.join(workdir, "data")
    split = dataset.load_split(data_dir, cfg.split)
    length = model_cfg.context_len
    windows_WL = features.windows(workdir, cfg.split, length, cfg.max_tokens)
    if windows_WL.shape[0] == 0:
        raise ValueError(
            f"the {cfg.split} split has fewer than context_len={length} tokens; nothing to evaluate"
        )
    first = 1 if cfg.exclude_first else 0
    concepts = dataset.load_meta(data_dir).get("concepts") or []
    with_concepts = split.labels_N is not None and bool(concepts)
    if with_concepts:
        labels_WL = np.asarray(split.labels_N[: windows_WL.size]).reshape(windows_WL.shape)
    else:  # one dummy concept keeps the batch shapes; its counts are never computed
        labels_WL = np.zeros(windows_WL.shape, np.uint32)
    st = EvalStatic(model_cfg, sae.hook, mlp_hook_of(sae.hook), first, with_concepts)
    # Contexts split over the mesh's devices (all processes'), everything else replicated.
    # The loaders place on this process's devices; here the values go onto the whole mesh.
    lm_params, sae, norm_scale = jax.tree.map(
        lambda a: parallel.place(np.asarray(a), parallel.replicated(mesh)),
        (lm_params, sae, np.float32(sae.norm_scale)))

    aux = _thresholds_and_shifts(lm_params, sae, norm_scale, windows_WL, cfg, st, mesh)
    aux = jax.device_put(aux, parallel.replicated(mesh))
    totals, t_loop, done = None, time.time(), 0
    batches = _batches(windows_WL, labels_WL, len(concepts) if with_concepts else 1,
                       cfg.batch_size, mesh)
    for tokens_BL, valid_B, labels_BLC in batches:
        sums = batch_sums(lm_params, sae, norm_scale, tokens_BL, valid_B, labels_BLC, aux, st)
        totals = m.accumulate(totals, sums)
        done = min(done + cfg.batch_size, windows_WL.shape[0])
        if done % (8 * cfg.batch_size) == 0 or done == windows_WL.shape[0]:
            rate = done * length / max(time.time() - t_loop, 1e-9)
            logging.info("eval %s: %d/%d contexts | %.0f tok/s", sae.name, done,
                         windows_WL.shape[0], rate)

    out_dir = os.path.join(workdir, "eval")
    summary = {
        "sae_name": sae.name,
        "variant": sae.sae_cfg.variant,
        "hook": sae.hook,
        "mlp_hook": st.mlp_hook,
        "split": cfg.split,
        "sae_step": sae.step,
        "lm_step": lm_step,
        "eval_contexts": int(windows_WL.shape[0]),
        "exclude_first": cfg.exclude_first,
    }
    summary.update(m.sae_finish(totals))
    summary.update(m.ce_finish(totals))
    corr_summary, per_feature = m.neuron_finish(totals, model_cfg.d_mlp)
    summary.update(corr_summary)
    if with_concepts:
        summary.update(m.concept_finish(totals, aux["thresholds_FT"], aux["thresholds_OT"],
                                        concepts, model_cfg.d_mlp, cfg.recovered_f1))
        summary.update(_probe_concepts(lm_params, sae, windows_WL, labels_WL, concepts, cfg, st,
                                       mesh, summary["concept_table"]))
    else:
        summary.update(_no_concepts(split.labels_N is None))
    weights = saebench.weight_metrics(*parallel.to_host((sae.params["w_enc_DF"],
                                                          sae.params["w_dec_FD"])))
    summary["saebench_core"], per_latent = saebench.core_finish(
        totals, contexts=windows_WL.shape[0], context_len=length, weights=weights)
    summary["max_decoder_cosine_sim"] = saebench.cosine_stats(weights["max_decoder_cosine_sim_F"])
    density_F = totals["fires_F"] / totals["n"]
    png = os.path.join(out_dir, f"{sae.name}_density.png")
    if distributed.is_primary():  # every process holds the same totals; one writes them
        os.makedirs(out_dir, exist_ok=True)
        density_plot(png, density_F, f"{sae.name} @ {sae.hook}, {int(totals['n'])} eval tokens")
        np.savez(os.path.join(out_dir, f"{sae.name}_features.npz"), density_F=density_F,
                 **per_feature, **per_latent)
    summary["density_png"] = png
    summary["wall_s"] = time.time() - t_start
    return metrics_io.finish_summary(os.path.join(out_dir, f"{sae.name}.json"), summary)
