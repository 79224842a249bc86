"""SAEBench's core metrics (analysis/saebench.py) against float64 NumPy references written the way
SAEBench / SAELens compute them: kept tokens gathered, per-token values, then means or ratios."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from monosem_jax.analysis import evaluate, features, saebench
from monosem_jax.analysis import metrics as m
from monosem_jax.configs.eval import default as eval_default
from monosem_jax.gpt import artifact as gpt_artifact
from monosem_jax.gpt import model as gpt_model
from monosem_jax.sae import artifact as sae_artifact


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _kl(p_BLV, q_BLV):
    logp, logq = _log_softmax(p_BLV), _log_softmax(q_BLV)
    return (np.exp(logp) * (logp - logq)).sum(-1)


def _nll(logits_BLV, tokens_BL):
    logp = _log_softmax(logits_BLV[:, :-1])
    return -np.take_along_axis(logp, tokens_BL[:, 1:, None], -1)[..., 0]


def reference_core(batches, contexts, context_len):
    """SAEBench's core metrics in float64 NumPy from per-batch arrays (x, x̂, f, mask, clean /
    spliced / zeroed logits, tokens), each formula as the docstrings of saebench.py cite it."""
    cat = {k: [] for k in ("x", "xhat", "f", "kl_sae", "kl_zero", "ce_clean", "ce_sae", "ce_zero",
                           "ev_legacy")}
    fires_F = contexts_F = 0.0
    for b in batches:
        keep_BL, keep_N = b["mask"], b["mask"].reshape(-1)
        x = b["x"].reshape(-1, b["x"].shape[-1])[keep_N].astype(np.float64)
        xhat = b["xhat"].reshape(-1, b["x"].shape[-1])[keep_N]
        f_BLF = b["f"].astype(np.float64)
        cat["x"].append(x)
        cat["xhat"].append(xhat.astype(np.float64))
        cat["f"].append(f_BLF.reshape(-1, f_BLF.shape[-1])[keep_N])
        clean, sae, zero = (b[k].astype(np.float64) for k in ("clean", "sae", "zero"))
        cat["kl_sae"].append(_kl(clean, sae)[keep_BL])  # every kept position, the last one too
        cat["kl_zero"].append(_kl(clean, zero)[keep_BL])
        pred_BL = keep_BL[:, :-1]  # CE: predictions from kept positions
        for key, logits in (("ce_clean", clean), ("ce_sae", sae), ("ce_zero", zero)):
            cat[key].append(_nll(logits, b["tokens"])[pred_BL])
        resid = ((x - xhat) ** 2).sum(-1)
        cat["ev_legacy"].append(1 - resid / ((x - x.mean(0)) ** 2).sum(-1))  # this batch's mean
        active_BLF = (f_BLF != 0) & keep_BL[..., None]
        fires_F = fires_F + active_BLF.sum((0, 1))
        contexts_F = contexts_F + active_BLF.any(1).sum(0)
    a = {k: np.concatenate(v) for k, v in cat.items()}
    x, xhat, f = a["x"], a["xhat"], a["f"]
    norm_in, norm_out = np.linalg.norm(x, axis=-1), np.linalg.norm(xhat, axis=-1)
    resid = ((x - xhat) ** 2).sum(-1)
    total_var = (x**2).sum(-1).mean() - (x.mean(0) ** 2).sum()
    kl_sae, kl_zero = a["kl_sae"].mean(), a["kl_zero"].mean()
    ce_clean, ce_sae, ce_zero = a["ce_clean"].mean(), a["ce_sae"].mean(), a["ce_zero"].mean()
    density = fires_F / x.shape[0]
    return {
        "model_behavior_preservation": {
            "kl_div_score": (kl_zero - kl_sae) / kl_zero,
            "kl_div_with_ablation": kl_zero, "kl_div_with_sae": kl_sae},
        "model_performance_preservation": {
            "ce_loss_score": (ce_zero - ce_sae) / (ce_zero - ce_clean),
            "ce_loss_with_ablation": ce_zero, "ce_loss_with_sae": ce_sae,
            "ce_loss_without_sae": ce_clean},
        "reconstruction_quality": {
            "explained_variance": 1 - resid.mean() / total_var,
            "explained_variance_legacy": a["ev_legacy"].mean(),
            "mse": resid.mean(),
            "cossim": ((x / norm_in[:, None]) * (xhat / norm_out[:, None])).sum(-1).mean()},
        "shrinkage": {
            "l2_norm_in": norm_in.mean(), "l2_norm_out": norm_out.mean(),
            "l2_ratio": (norm_out / np.where(np.abs(norm_in) < 1e-4, 1, norm_in)).mean(),
            "relative_reconstruction_bias": (norm_out**2).mean() / (x * xhat).sum(-1).mean()},
        "sparsity": {"l0": (f != 0).sum(-1).mean(), "l1": np.abs(f).sum(-1).mean()},
        "token_stats": {"total_tokens_eval_reconstruction": contexts * context_len,
                        "total_tokens_eval_sparsity_variance": contexts * context_len},
        "misc_metrics": {
            "frac_alive": (density > 0).mean(),
            "freq_over_1_percent": (density > 0.01).mean(),
            "freq_over_10_percent": (density > 0.1).mean(),
            "normalized_freq_over_1_percent": density[density > 0.01].sum() / density.sum(),
            "normalized_freq_over_10_percent": density[density > 0.1].sum() / density.sum()},
    }, {"feature_density_F": density,
        "consistent_activation_heuristic_F": np.divide(fires_F, contexts_F,
                                                       where=contexts_F > 0,
                                                       out=np.full_like(density, np.nan))}


def assert_core_close(got: dict, want: dict, rtol: float, atol: float = 0.0, loose=()):
    """Every field of want in got (the same groups and keys); `loose` keys get 20x the rtol."""
    for group, fields in want.items():
        assert set(got[group]) >= set(fields), group
        for key, value in fields.items():
            tol = rtol * (20 if key in loose else 1)
            assert got[group][key] == pytest.approx(value, rel=tol, abs=atol), (group, key)


def _random_batch(rng, b=3, length=6, d=5, f=11, v=9):
    x = rng.normal(size=(b, length, d)) * 2 + 0.5
    x[0, 2] *= 1e-5  # an input norm under 1e-4: the l2 ratio divides by 1 there
    xhat = 0.8 * x + 0.3 * rng.normal(size=x.shape)
    acts = np.where(rng.random((b, length, f)) < 0.3, rng.gamma(2.0, size=(b, length, f)), 0.0)
    acts[..., 3] = 0.0  # a dead latent
    acts[..., 4] = -acts[..., 4]  # signed latents count in L0 (!= 0) and L1 (|f|)
    mask = rng.random((b, length)) < 0.8
    mask[:, 0] = False  # exclude_first
    mask[-1] = False  # a padded context
    clean = rng.normal(size=(b, length, v)) * 2
    return {"x": x, "xhat": xhat, "f": acts, "mask": mask, "clean": clean,
            "sae": clean + 0.3 * rng.normal(size=clean.shape),
            "zero": rng.normal(size=clean.shape) * 2,
            "tokens": rng.integers(0, v, (b, length))}


@jax.jit
def _sums(b):
    """The eval's per-batch sums of one random batch: metrics.lm_sums + saebench.core_sums."""
    f32 = {k: jnp.asarray(v, jnp.float32) for k, v in b.items() if k not in ("mask", "tokens")}
    sums = m.lm_sums(f32["clean"], f32["sae"], f32["zero"], b["tokens"], b["mask"])
    sums.update(saebench.core_sums(f32["x"], f32["xhat"], f32["f"], b["mask"]))
    pred = b["mask"][:, :-1]  # lm_sums shares one log-softmax per run: as the separate sums
    sums["check_ce"] = m.ce_sum(f32["sae"][:, :-1], b["tokens"][:, 1:], pred)
    sums["check_kl"] = m.kl_sum(f32["clean"][:, :-1], f32["sae"][:, :-1], pred)
    return sums


def test_core_sums_and_finish_match_numpy():
    rng = np.random.default_rng(0)
    batches = [_random_batch(rng) for _ in range(3)]
    totals = None
    for b in batches:  # float32 sums per batch, float64 totals: streamed as the eval does
        totals = m.accumulate(totals, _sums(b))
    assert totals["ce_spliced"] == pytest.approx(totals["check_ce"], rel=1e-6)
    assert totals["kl_spliced"] == pytest.approx(totals["check_kl"], rel=1e-6)
    core, per_latent = saebench.core_finish(totals, contexts=9, context_len=6)
    want, want_latent = reference_core(batches, contexts=9, context_len=6)
    assert_core_close(core, want, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(per_latent["feature_density_F"], want_latent["feature_density_F"])
    cah = per_latent["consistent_activation_heuristic_F"]
    assert np.isnan(cah[3]) and np.isnan(want_latent["consistent_activation_heuristic_F"][3])
    np.testing.assert_allclose(cah, want_latent["consistent_activation_heuristic_F"])
    assert core["sparsity"]["l1"] > 0 and core["misc_metrics"]["frac_alive"] == 10 / 11


def test_explained_variance_and_scores_edge_cases():
    def finish(**over):
        totals = {"sb_n": 4.0, "predictions": 4.0, "ce_clean": 4.0, "ce_spliced": 4.0,
                  "ce_zero": 4.0, "kl_sae_kept": 0.0, "kl_zero_kept": 0.0, "sb_sse": 0.0,
                  "sb_sum_sq": 4.0, "sb_sum_x_D": np.array([4.0, 0.0]), "sb_fires_F": np.zeros(3),
                  "sb_contexts_F": np.zeros(3), **{k: 1.0 for k in (
                      "sb_l2_in", "sb_l2_out", "sb_l2_ratio", "sb_xhat_sq", "sb_x_dot_xhat",
                      "sb_cossim", "sb_ev_legacy", "sb_l1")}}
        return saebench.core_finish({**totals, **over}, contexts=1, context_len=4)[0]

    # A constant input (zero variance): EV 1 if reconstructed exactly, else 0 (evals.py:440).
    assert finish()["reconstruction_quality"]["explained_variance"] == 1.0
    assert finish(sb_sse=1.0)["reconstruction_quality"]["explained_variance"] == 0.0
    # Undefined scores (no KL / CE gap) come out null in the JSON, not NaN.
    core = finish()
    assert core["model_behavior_preservation"]["kl_div_score"] is None
    assert core["model_performance_preservation"]["ce_loss_score"] is None
    assert core["misc_metrics"]["normalized_freq_over_1_percent"] == 0.0  # nothing fires
    assert saebench.json_safe({"a": {"b": np.float32(np.inf), "c": np.int64(3)}}) == {
        "a": {"b": None, "c": 3}}


def test_max_cosine_sims_chunked_match_brute_force():
    rng = np.random.default_rng(1)
    w_FD = rng.normal(size=(37, 6))
    w_FD[5] = 3 * w_FD[20]  # a scaled duplicate: cosine 1 both ways
    w_FD[7] = 0.0  # a zero row: torch's normalize keeps it 0, so its cosines are 0
    u = w_FD / np.maximum(np.linalg.norm(w_FD, axis=1, keepdims=True), 1e-12)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    want = sims.max(1)
    for chunk in (8, 37, 100):  # 37 = 4 blocks of 8 + a padded one; one block; chunk > F
        got = np.asarray(saebench.max_cosine_sims(jnp.asarray(w_FD, jnp.float32), chunk=chunk))
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert want[5] == pytest.approx(1.0) and want[20] == pytest.approx(1.0)
    w_enc_DF = rng.normal(size=(6, 37))
    weights = saebench.weight_metrics(w_enc_DF, w_FD)
    enc = w_enc_DF.T / np.linalg.norm(w_enc_DF.T, axis=1, keepdims=True)
    np.testing.assert_allclose(weights["encoder_decoder_cosine_sim_F"], (enc * u).sum(1),
                               atol=1e-6)
    enc_sims = enc @ enc.T
    np.fill_diagonal(enc_sims, -np.inf)
    np.testing.assert_allclose(weights["max_encoder_cosine_sim_F"], enc_sims.max(1), atol=1e-6)
    stats = saebench.cosine_stats(want)
    assert stats["max"] == pytest.approx(1.0) and stats["median"] == np.median(want)
    assert stats["frac_above_0_9"] == np.mean(want > 0.9) >= 2 / 37


def test_evaluate_writes_saebench_core_matching_numpy(sae_workdir, copy_workdir):
    """A real smoke eval (2 batches of 8 contexts) against the metrics recomputed in NumPy from
    the LM's clean / spliced / zero-ablated logits and the SAE's outputs on the same contexts."""
    workdir = copy_workdir(sae_workdir)
    meta_path = os.path.join(workdir, "data", "meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    with open(meta_path, "w") as f:  # no concept or probe passes: only what this test reads
        json.dump({**meta, "labelled": False}, f)
    config = eval_default.get_config("smoke")
    config.max_tokens = 512  # 16 contexts of 32
    summary = evaluate.evaluate(config, workdir)
    core = summary["saebench_core"]

    model_cfg, lm_params, _ = gpt_artifact.load_trained(workdir)
    sae = sae_artifact.load_sae(workdir, summary["sae_name"])
    windows_WL = features.windows(workdir, "eval", model_cfg.context_len, config.max_tokens)
    hook = sae.hook

    @jax.jit
    def outputs(tokens_BL):
        clean, cap = gpt_model.forward(model_cfg, lm_params, tokens_BL, capture=(hook,))
        x = cap[hook]
        xhat = sae_artifact.reconstruct(sae, x)
        keep = (jnp.arange(tokens_BL.shape[1]) >= 1)[None, :, None]  # exclude_first
        sae_logits, _ = gpt_model.forward(model_cfg, lm_params, tokens_BL, intervene={
            hook: lambda v: jnp.where(keep, xhat, v)})
        zero, _ = gpt_model.forward(model_cfg, lm_params, tokens_BL, intervene={
            hook: lambda v: jnp.where(keep, 0.0, v)})
        return clean, sae_logits, zero, x, xhat, sae_artifact.feature_acts(sae, x)

    batches = []
    for lo in range(0, windows_WL.shape[0], 8):
        tokens = windows_WL[lo : lo + 8]
        clean, sae_logits, zero, x, xhat, f = (np.asarray(a) for a in outputs(tokens))
        mask = np.ones(tokens.shape, bool)
        mask[:, 0] = False
        batches.append({"x": x, "xhat": xhat, "f": f, "mask": mask, "clean": clean,
                        "sae": sae_logits, "zero": zero, "tokens": tokens})
    want, want_latent = reference_core(batches, *windows_WL.shape)
    # KLs here are ~1e-3 nats, differences of float32 log-probabilities: looser there.
    assert_core_close(core, want, rtol=2e-4, atol=1e-8,
                      loose=("kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"))
    npz = np.load(os.path.join(workdir, "eval", f"{sae.name}_features.npz"))
    np.testing.assert_allclose(npz["feature_density_F"], want_latent["feature_density_F"])
    np.testing.assert_allclose(npz["consistent_activation_heuristic_F"],
                               want_latent["consistent_activation_heuristic_F"])
    w_dec = np.asarray(sae.params["w_dec_FD"], np.float64)
    u = w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_allclose(npz["max_decoder_cosine_sim_F"], sims.max(1), atol=1e-5)
    assert core["misc_metrics"]["average_max_decoder_cosine_sim"] == pytest.approx(
        sims.max(1).mean(), abs=1e-5)
    assert summary["max_decoder_cosine_sim"]["median"] == pytest.approx(
        np.median(sims.max(1)), abs=1e-5)
    # The flat keys other code reads agree with the SAEBench block (mse: SAE input units there).
    perf = core["model_performance_preservation"]
    assert perf["ce_loss_without_sae"] == summary["ce_loss_clean"]
    assert perf["ce_loss_score"] == summary["ce_loss_recovered"]
    assert core["sparsity"]["l0"] == pytest.approx(summary["l0"])
    quality = core["reconstruction_quality"]
    assert quality["mse"] * sae.norm_scale**2 == pytest.approx(summary["mse"], rel=1e-4)
    assert quality["explained_variance"] == pytest.approx(summary["explained_variance"], abs=1e-5)
    assert 1 - core["misc_metrics"]["frac_alive"] == pytest.approx(summary["dead_fraction"])
    assert math.isfinite(core["model_behavior_preservation"]["kl_div_score"])
