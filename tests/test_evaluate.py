"""SAE evaluation: metric functions against NumPy, an exact splice, and a smoke run end to end."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from monosem_jax import metrics_io
from monosem_jax.analysis import evaluate, features, saebench
from monosem_jax.analysis import metrics as m
from monosem_jax.configs.eval import default as eval_default
from monosem_jax.gpt import artifact as gpt_artifact
from monosem_jax.gpt import model as gpt_model
from monosem_jax.sae import model as sae_model
from monosem_jax.sae.artifact import TrainedSAE


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_ce_loss_recovered():
    assert m.ce_loss_recovered(clean=1.0, spliced=1.5, zero=3.0) == pytest.approx(0.75)
    assert m.ce_loss_recovered(clean=1.0, spliced=1.0, zero=3.0) == 1.0
    assert m.ce_loss_recovered(clean=1.0, spliced=3.0, zero=3.0) == 0.0
    assert math.isnan(m.ce_loss_recovered(clean=2.0, spliced=2.5, zero=2.0))


def test_ce_and_kl_sums_match_numpy():
    rng = np.random.default_rng(0)
    p_BLV, q_BLV = rng.normal(size=(2, 3, 5, 7)) * 3
    targets_BL = rng.integers(0, 7, (3, 5))
    mask_BL = rng.random((3, 5)) < 0.6
    logp, logq = _log_softmax(p_BLV), _log_softmax(q_BLV)
    nll = -np.take_along_axis(logp, targets_BL[..., None], -1)[..., 0]
    kl = (np.exp(logp) * (logp - logq)).sum(-1)
    args = (jnp.asarray(p_BLV, jnp.float32), jnp.asarray(q_BLV, jnp.float32))
    np.testing.assert_allclose(
        m.ce_sum(args[0], jnp.asarray(targets_BL), jnp.asarray(mask_BL)), nll[mask_BL].sum(),
        rtol=1e-5,
    )
    np.testing.assert_allclose(m.kl_sum(*args, jnp.asarray(mask_BL)), kl[mask_BL].sum(), rtol=1e-5)
    assert float(m.kl_sum(args[0], args[0], jnp.asarray(mask_BL))) == pytest.approx(0, abs=1e-5)


def test_streamed_correlations_match_corrcoef():
    rng = np.random.default_rng(1)
    n, a_dim, b_dim = 700, 6, 4
    b_NB = rng.normal(size=(n, b_dim)) + 50.0  # a large mean: cancellation if unshifted
    a_NA = np.maximum(b_NB[:, :1] * 0.5 + rng.normal(size=(n, a_dim)) - 25, 0)  # sparse-ish
    a_NA[:, -1] = 3.0  # a constant unit: correlation 0, not NaN
    keep_N = rng.random(n) < 0.8  # masked rows hold garbage that must not count
    a_in, b_in = np.where(keep_N[:, None], a_NA, 1e6), np.where(keep_N[:, None], b_NB, -1e6)
    shifts = [jnp.asarray(x[:64].mean(0), jnp.float32) for x in (a_NA, b_NB)]
    totals = None
    chunk = jax.jit(m.corr_chunk)
    for lo in range(0, n, 175):  # one compiled shape; the mask does the rest
        a, b = (jnp.asarray(x[lo : lo + 175], jnp.float32) for x in (a_in, b_in))
        totals = m.accumulate(totals, chunk(a, b, *shifts, jnp.asarray(keep_N[lo : lo + 175])))
    corr_AB = m.corr_finish(totals)
    joint = np.corrcoef(np.concatenate([a_NA[keep_N, :-1], b_NB[keep_N]], 1).T)
    want = joint[: a_dim - 1, a_dim - 1 :]
    np.testing.assert_allclose(corr_AB[:-1], want, atol=2e-5)
    np.testing.assert_array_equal(corr_AB[-1], 0.0)


def test_threshold_f1_and_selection_match_brute_force():
    rng = np.random.default_rng(2)
    n, units, concepts = 400, 5, 3
    labels_NC = rng.random((n, concepts)) < [0.3, 0.05, 0.0]  # concept 2 never present
    a_NU = rng.normal(size=(n, units))
    a_NU[:, 1] += 3 * labels_NC[:, 0]  # unit 1 detects concept 0 at a threshold near 1.5
    mask_N = rng.random(n) < 0.9
    thresholds_UT = np.concatenate([m.quantile_thresholds(a_NU, (0.5, 0.3, 0.1)),
                                    np.full((units, 1), 1.5, np.float32)], 1)
    frac_above = (a_NU[:, :, None] > thresholds_UT[None]).mean(0)[:, :3]
    np.testing.assert_allclose(frac_above, np.tile([0.5, 0.3, 0.1], (units, 1)), atol=0.01)
    counts = jax.jit(m.threshold_counts)(jnp.asarray(a_NU, jnp.float32), thresholds_UT,
                                         jnp.asarray(labels_NC), jnp.asarray(mask_N))
    counts = jax.device_get(counts)
    f1_UTC, prec_UTC, rec_UTC = m.f1_from_counts(counts["tp_UTC"], counts["pos_UT"],
                                                 counts["label_C"])
    for u in range(units):
        for t in range(thresholds_UT.shape[1]):
            pred = (a_NU[:, u] > thresholds_UT[u, t])[mask_N]
            for c in range(concepts):
                true = labels_NC[mask_N, c]
                tp = np.sum(pred & true)
                p = tp / pred.sum() if pred.sum() else 0.0
                r = tp / true.sum() if true.sum() else 0.0
                f1 = 2 * p * r / (p + r) if p + r else 0.0
                assert counts["tp_UTC"][u, t, c] == tp
                np.testing.assert_allclose([f1_UTC[u, t, c], prec_UTC[u, t, c], rec_UTC[u, t, c]],
                                           [f1, p, r], atol=1e-12)
    unit_C, t_C, best_C = m.best_detectors(f1_UTC)
    assert unit_C[0] == 1 and best_C[0] > 0.8
    assert f1_UTC[unit_C[0], t_C[0], 0] == f1_UTC[..., 0].max()
    np.testing.assert_allclose(best_C, f1_UTC.max(axis=(0, 1)))
    assert best_C[2] == 0.0
    # Feature thresholds come from the non-zero values; silent features get 0.
    f_NF = np.maximum(a_NU[:, :2], 0) * [1, 0]
    q_FR = m.positive_quantile_thresholds(f_NF, (0.5,))
    np.testing.assert_allclose(q_FR[:, 0], [np.median(f_NF[f_NF[:, 0] > 0, 0]), 0.0], rtol=1e-6)


def _identity_sae(d: int):
    """anthropic_2024 params with x̂ = x exactly: f = ReLU([x, −x]), W_dec = [I; −I]."""
    eye_DD = np.eye(d, dtype=np.float32)
    params = {
        "w_enc_DF": jnp.asarray(np.concatenate([eye_DD, -eye_DD], 1)),
        "b_enc_F": jnp.zeros(2 * d),
        "w_dec_FD": jnp.asarray(np.concatenate([eye_DD, -eye_DD], 0)),
        "b_dec_D": jnp.zeros(d),
    }
    return sae_model.SAEConfig(d=d, d_sae=2 * d), params


def test_exact_splice_recovers_all_and_zero_ablation_hurts(smoke_lm_workdir):
    model_cfg, lm_params, _ = gpt_artifact.load_trained(smoke_lm_workdir)  # trained: sharp logits
    tokens_BL = features.windows(smoke_lm_workdir, "eval", model_cfg.context_len)[:8]
    d, d_mlp = model_cfg.d_model, model_cfg.d_mlp
    sae_cfg, sae_params = _identity_sae(d)
    hook = "blocks.0.hook_resid_post"
    st = evaluate.EvalStatic(model_cfg, hook, evaluate.mlp_hook_of(hook), first=0,
                             with_concepts=False)
    sae = TrainedSAE("identity", sae_cfg, sae_params, {}, hook, norm_scale=2.5, step=0)
    aux = {"shift_F": jnp.zeros(2 * d), "shift_U": jnp.zeros(d_mlp + d)}
    sums = evaluate.batch_sums(lm_params, sae, jnp.float32(2.5), tokens_BL,
                               np.ones(8, bool), np.zeros((*tokens_BL.shape, 1), bool), aux, st)
    totals = m.accumulate(None, sums)
    ce = m.ce_finish(totals)
    reference = jax.jit(lambda p, t: gpt_model.next_token_loss(
        gpt_model.forward(model_cfg, p, t)[0][:, :-1], t[:, 1:]))
    want_clean = float(reference(lm_params, tokens_BL))
    assert ce["ce_loss_clean"] == pytest.approx(want_clean, rel=1e-5)
    assert ce["ce_loss_spliced"] == pytest.approx(ce["ce_loss_clean"], abs=1e-4)
    assert ce["kl_spliced"] == pytest.approx(0.0, abs=1e-4)
    assert abs(ce["ce_loss_zero"] - ce["ce_loss_clean"]) > 5e-3  # (a 24-step smoke LM)
    assert ce["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert m.sae_finish(totals)["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    # SAEBench's view of an exact splice: every score 1, no shrinkage, nothing lost.
    core, _ = saebench.core_finish(totals, contexts=8, context_len=tokens_BL.shape[1])
    assert core["model_behavior_preservation"]["kl_div_with_sae"] == pytest.approx(0, abs=1e-5)
    assert core["model_behavior_preservation"]["kl_div_with_ablation"] > 1e-3
    assert core["model_behavior_preservation"]["kl_div_score"] == pytest.approx(1.0, abs=1e-3)
    assert core["model_performance_preservation"]["ce_loss_score"] == ce["ce_loss_recovered"]
    for group, key in (("reconstruction_quality", "cossim"), ("shrinkage", "l2_ratio"),
                       ("shrinkage", "relative_reconstruction_bias"),
                       ("reconstruction_quality", "explained_variance")):
        assert core[group][key] == pytest.approx(1.0, abs=1e-5), key
    assert core["reconstruction_quality"]["mse"] == pytest.approx(0.0, abs=1e-8)
    assert core["sparsity"]["l0"] == pytest.approx(d, rel=0.1)  # ReLU([x, -x]): ~one per dim


def test_evaluate_smoke_end_to_end(sae_workdir, capsys):
    config = eval_default.get_config("smoke")
    summary = evaluate.evaluate(config, sae_workdir)
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    name = metrics_io.resolve_sae_name(sae_workdir, "")  # the fixture's only run
    assert summary["sae_name"] == name
    path = os.path.join(sae_workdir, "eval", f"{name}.json")
    with open(path) as f:
        assert json.load(f) == json.loads(last_line) == summary
    assert os.path.getsize(os.path.join(sae_workdir, "eval", f"{name}_density.png")) > 1000
    assert os.path.exists(os.path.join(sae_workdir, "eval", f"{name}_features.npz"))
    assert summary["hook"] == "blocks.0.hook_resid_post"
    assert summary["mlp_hook"] == "blocks.0.hook_mlp_post"
    assert summary["eval_tokens"] == 2048 // 32 * 31
    for key in ("explained_variance", "l0", "ce_loss_clean", "ce_loss_spliced", "ce_loss_zero",
                "ce_loss_recovered", "kl_spliced", "wall_s", "neuron_corr_median",
                "resid_corr_median"):
        assert math.isfinite(summary[key]), key
    assert summary["explained_variance"] <= 1 and summary["l0"] > 0 and summary["kl_spliced"] >= 0
    for key in ("dead_fraction", "dense_fraction", "neuron_corr_below_0_3", "resid_corr_below_0_3",
                "concepts_recovered_fraction", "concepts_recovered_fraction_neuron"):
        assert 0 <= summary[key] <= 1, key
    assert 0 < summary["ce_loss_clean"] < summary["ce_loss_zero"]
    assert set(summary["concept_f1"]) == set(summary["concept_f1_neuron"])
    assert summary["concept_f1"] and len(summary["concept_table"]) == len(summary["concept_f1"])
    for name, best in summary["concept_f1"].items():
        assert 0 <= best["f1"] <= 1 and 0 <= best["feature"] < 128 and best["threshold"] >= 0
        unit = summary["concept_f1_neuron"][name]
        kind, index = unit["unit"].split(":")
        assert (kind, unit["direction"]) in {(k, d) for k in ("mlp", "resid")
                                             for d in ("above", "below")}
        assert 0 <= int(index) < (64 if kind == "mlp" else 32) and 0 <= unit["f1"] <= 1
    # Probes: every eval window is sampled (probe_tokens > eval tokens), split in two halves.
    assert summary["probe_train_tokens"] == summary["probe_test_tokens"] == 32 * 31
    table = summary["concept_table"]
    for row in table:
        for key in ("probe_f1", "sparse_probe_f1_k1", "sparse_probe_f1_k2", "sparse_probe_f1_k5",
                    "sparse_probe_over_ceiling_k1"):
            assert row[key] is None or 0 <= row[key] <= (1 if "ceiling" not in key else np.inf), key
        assert len(row["sparse_probe_latents"]) == 5 and max(row["sparse_probe_latents"]) < 128
        if row["probe_f1"]:
            assert row["sparse_probe_over_ceiling_k1"] == pytest.approx(
                row["sparse_probe_f1_k1"] / row["probe_f1"])
    probed = [r for r in table if r["probe_f1"] is not None]
    assert probed and summary["concepts_probed"] == len(probed)
    assert summary["concepts_feature_beats_unit"] == sum(r["f1"] > r["neuron_f1"] for r in table)
    assert 0 <= summary["concepts_sparse_probe_k1_over_ceiling_ge_0_9"] <= len(probed)
    assert "L-BFGS" in summary["probe_recipe"] and summary["probe_wall_s"] > 0


def test_unlabelled_corpus_and_missing_run(sae_workdir, copy_workdir):
    workdir = copy_workdir(sae_workdir)
    meta_path = os.path.join(workdir, "data", "meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    with open(meta_path, "w") as f:
        json.dump({**meta, "labelled": False}, f)  # as a real-text corpus is written
    summary = evaluate.evaluate(eval_default.get_config("smoke"), workdir)
    assert summary["concept_f1"] is None and summary["concepts_recovered_fraction"] is None
    assert "no concept labels" in summary["concept_note"]
    assert math.isfinite(summary["ce_loss_recovered"])
    config = eval_default.get_config("smoke")
    config.sae_name = "nope"
    with pytest.raises(FileNotFoundError):
        evaluate.evaluate(config, workdir)
    config = eval_default.get_config("smoke")
    config.threshold_rates = (0.5, 2.0)
    with pytest.raises(ValueError, match="threshold_rates"):
        evaluate.evaluate(config, workdir)


def test_report_shows_every_evaluated_sae_with_probe_columns(sae_workdir, copy_workdir):
    from monosem_jax import report

    workdir = copy_workdir(sae_workdir)
    config = eval_default.get_config("smoke")
    summary = evaluate.evaluate(config, workdir)
    # A second SAE's evaluation from before the probes existed: its probe cells show "–".
    legacy = {**summary, "sae_name": "legacy"}
    del legacy["saebench_core"]  # nor SAEBench's metrics: "–" in their table
    legacy["concept_table"] = [{k: v for k, v in r.items() if "probe" not in k}
                               for r in summary["concept_table"]]
    for key in [k for k in legacy if "probe" in k or k == "concepts_feature_beats_unit"]:
        del legacy[key]
    with open(os.path.join(workdir, "eval", "legacy.json"), "w") as f:
        json.dump(legacy, f)
    report.write_report(config, workdir)
    with open(os.path.join(workdir, "report.md")) as f:
        text = f.read()
    bench = text[text.index("| SAE | KL score |"):].split("\n")
    core = summary["saebench_core"]
    assert bench[2].startswith(f"| `{summary['sae_name']}` | "
                               f"{core['model_behavior_preservation']['kl_div_score']:.3f} | "
                               f"{core['model_performance_preservation']['ce_loss_score']:.3f} |")
    assert bench[3] == "| `legacy` |" + " – |" * 13
    section = text[text.index("## Planted concepts"):]
    assert section.index(f"### `{summary['sae_name']}`") < section.index("### `legacy`")  # default
    header = "| probe ceiling | k=1 | k=2 | k=5 | k=1 / ceiling |"
    assert section.count(header) == 1  # the legacy table has no k columns
    row = summary["concept_table"][0]
    cells = [c.strip() for c in section.split(f"\n| {row['concept']} |")[1].split("\n")[0]
             .split("|")]
    assert cells[5:10] == [format(row[k], ".2f") if row[k] is not None else "–" for k in (
        "probe_f1", "sparse_probe_f1_k1", "sparse_probe_f1_k2", "sparse_probe_f1_k5",
        "sparse_probe_over_ceiling_k1")]
    legacy_rows = section[section.index("### `legacy`"):].split("\n| " + row["concept"] + " |")
    assert legacy_rows[1].split("\n")[0].rstrip().endswith("| – | – |")
