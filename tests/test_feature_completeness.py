"""experiments/feature_completeness.py: its smoke run end to end, its scoring against a direct
NumPy count over the store, and its logistic fit on data with a known answer."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

import feature_completeness as fc  # noqa: E402


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("completeness")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "feature_completeness.py"), "--smoke",
         f"--root={root}", "--f1_threshold=0.3"],
        capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, json.loads(proc.stdout.strip().splitlines()[-1])


def test_smoke_run_prints_json_last_and_writes_its_figures(smoke_run):
    root, printed = smoke_run
    saved = json.loads((root / "w" / "completeness" / "summary.json").read_text())
    assert printed["settings"] == saved["settings"]
    assert printed["settings"]["sizes"] == [64, 128]
    for png in ("completeness.png", "f1_by_frequency.png"):
        assert (root / "w" / "completeness" / png).stat().st_size > 10_000
    # The largest SAE evaluated (the rare characters among its concepts) and the report's section.
    evaluated = json.loads((root / "w" / "eval" / "fc_128.json").read_text())
    assert {"rare_00", "rare_03"} <= {r["concept"] for r in evaluated["concept_table"]}
    report = (root / "w" / "report.md").read_text()
    assert "## Feature completeness" in report and "| 128 | " in report
    scores = saved["scores"]
    rare = [f"rare_{i:02d}" for i in range(4)]
    assert len(saved["points"]) == len(scores) * len(rare)  # every planted concept is in the store
    for s in scores:
        assert 0 < s["alive"] <= s["d_sae"]
        assert all(0 <= f <= 1 for f in s["best_f1"].values())
        assert s["frequency"] == scores[0]["frequency"]  # the same rows for every size
    # Planted 10x apart: the most frequent character has several times the least's mentions.
    assert scores[0]["mentions"]["rare_00"] > 3 * scores[0]["mentions"]["rare_03"] > 0


def test_scores_equal_a_direct_count_over_the_store(smoke_run):
    from monosem_jax.corpus import dataset
    from monosem_jax.sae import artifact as sae_artifact

    root, _ = smoke_run
    workdir = str(root / "w")
    concepts = dataset.load_meta(os.path.join(workdir, "data"))["concepts"]
    got = fc.score_sae(workdir, "fc_64", concepts, max_rows=20_000)
    sae = sae_artifact.load_sae(workdir, "fc_64")
    store = sae_artifact.training_store("", sae.hook, workdir)
    split = dataset.load_split(os.path.join(workdir, "data"), "train")
    a_NF = np.asarray(sae_artifact.feature_acts(sae, store.read_rows(0, 20_000)), np.float64)
    index_R, bits_R = fc.row_tokens(store, split, 20_000)
    labels_NC = ((bits_R[:, None] >> np.arange(len(concepts), dtype=np.uint32)) & 1).astype(bool)
    # The detector "fires" (t = 0) alone, in float64: the best F1 can only be higher.
    fire_NF = a_NF > 0
    tp_FC = fire_NF.T.astype(np.int64) @ labels_NC.astype(np.int64)
    f1_FC = 2 * tp_FC / (fire_NF.sum(0)[:, None] + labels_NC.sum(0)[None] + 1e-300)
    # Matmuls of another batch shape may move an activation across 0 by an ulp.
    assert abs(got["alive"] - int(fire_NF.any(0).sum())) <= 1
    for i, c in enumerate(concepts):
        assert got["frequency"][c] == labels_NC[:, i].mean()
        assert got["best_f1"][c] >= f1_FC[:, i].max() - 1e-3
        # ... and at most the best F1 of the feature it names at any threshold: the top-k rows
        # by its activation, every k (an upper bound: ties may not split).
        values = a_NF[:, got["best_feature"][c]]
        order = np.argsort(-values, kind="stable")
        order = order[values[order] > 0]
        tp_K = np.cumsum(labels_NC[order, i])
        f1_K = 2 * tp_K / (np.arange(1, len(order) + 1) + labels_NC[:, i].sum())
        assert got["best_f1"][c] <= f1_K.max(initial=0.0) + 1e-3
    # Mentions: runs of consecutive tokens with one rare concept; found when the feature fires
    # (> 0) on any token of the run, a false positive for each firing outside the concept.
    for i, c in enumerate(concepts):
        if not c.startswith("rare_"):
            continue
        on_R = labels_NC[:, i]
        start_R = on_R & ~np.r_[False, on_R[:-1] & (index_R[1:] == index_R[:-1] + 1)]
        run_R = np.cumsum(start_R) - 1
        assert got["mentions"][c] == start_R.sum()
        found_F = np.zeros(a_NF.shape[1])
        for f in range(a_NF.shape[1]):
            fired = fire_NF[:, f]
            found = len(np.unique(run_R[on_R & fired]))
            outside = (fired & ~on_R).sum()
            found_F[f] = 2 * found / (found + outside + start_R.sum())
        assert got["best_mention_f1"][c] >= found_F.max() - 1e-3


def test_logistic_fit_recovers_known_parameters_and_separable_data_scores_high():
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, 20_000)
    y = rng.random(20_000) < 1 / (1 + np.exp(-(0.5 + 2.0 * x)))
    (a, b), _, r2 = fc.fit_logistic(x, y)
    assert abs(a - 0.5) < 0.1 and abs(b - 2.0) < 0.1
    assert 0.3 < r2 < 0.9
    x2 = rng.uniform(-3, 3, 20_000)  # two variables: each slope recovered
    y = rng.random(20_000) < 1 / (1 + np.exp(-(0.5 + 2.0 * x - 1.0 * x2)))
    w, _, _ = fc.fit_logistic(np.stack([x, x2], axis=1), y)
    np.testing.assert_allclose(w, [0.5, 2.0, -1.0], atol=0.1)
    x = np.linspace(-2, 2, 40)
    (a, b), _, r2 = fc.fit_logistic(x, x > 0.3)  # separable: a steep logistic through the gap
    assert b > 5 and abs(-a / b - 0.3) < 0.06 and r2 > 0.95
    assert list(fc._ranks(np.array([3.0, 1.0, 1.0, 2.0]))) == [3.0, 0.5, 0.5, 2.0]
