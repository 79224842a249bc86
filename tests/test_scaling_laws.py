"""experiments/scaling_laws.py: its smoke run end to end on the smoke pipeline's store, its fits on
data with a known answer, one compiled step per width across the grid's programs, and a grid
member equal to the same SAE trained alone."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

import _scaling_fit as fit  # noqa: E402
import scaling_laws  # noqa: E402

PNGS = ("loss_vs_compute.png", "isoflop.png", "optimal_shape.png", "lr_vs_compute.png")


@pytest.fixture(scope="module")
def smoke_run(sae_workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling_laws")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "scaling_laws.py"), "--smoke",
         f"--workdir={sae_workdir}", f"--out={out}"],
        capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_smoke_run_prints_json_last_writes_figures_and_finite_fits(smoke_run, sae_workdir):
    out, printed = smoke_run
    saved = json.loads((out / "scaling_laws.json").read_text())
    assert saved["fits"] == printed["fits"] and saved["settings"]["levels"] == 4
    for png in PNGS:
        assert (out / png).stat().st_size > 10_000, png
    assert len(printed["frontier"]) == 4 and len(printed["levels"]) == 4
    for key in fit.FRONTIER_KEYS:
        law = printed["fits"][key]
        assert all(math.isfinite(law[k]) for k in ("coef", "exponent", "r2")), key
        spread = printed["bootstrap"][key]
        assert spread["q05"] <= law["exponent"] + 1e-9 or spread["std"] > 0, key
        assert math.isfinite(spread["std"]) and spread["q05"] <= spread["q95"], key
    # Every program of a width reused one compiled step (the probe's jit is its own).
    assert set(printed["step_compilations_per_width"].values()) == {1}
    assert printed["acceptance"]["compiled_once_per_width"]
    assert printed["programs_trained"] == printed["programs"] >= 12
    assert printed["plan"]["estimated_s"] > 0 and printed["masking"]["masked_over_separate"] > 0
    for runs in printed["levels"]:
        for run in runs:
            assert len(run["lrs"]) == len(run["loss"]) >= 3 and min(run["loss"]) > 0
    # Only --out is written: no default results folder, no SAE runs in W/sae.
    assert not os.path.exists(os.path.join(sae_workdir, "scaling_laws"))
    assert not [n for n in os.listdir(os.path.join(sae_workdir, "sae")) if "scaling" in n]


def test_power_law_is_recovered_exactly_from_exact_data():
    c = np.geomspace(1e9, 1e12, 5)
    law = fit.power_law(c, 3.5 * c**-0.37)
    assert abs(law["exponent"] + 0.37) < 1e-6 and abs(law["coef"] / 3.5 - 1) < 1e-6
    assert law["r2"] > 1 - 1e-12 and abs(law["decades"] - 3) < 1e-9 and law["points"] == 5


def _synthetic_levels(exponent_f=0.5, exponent_lr=-0.25, lrs=(0.5, 1, 2, 4)):
    """IsoFLOP levels whose loss is exactly parabolic in log F and in log lr around known
    optima F* = 0.02·C^0.5 and lr* = 0.3·C^-0.25, with loss* = 40·C^-0.1."""
    levels = []
    for c in np.geomspace(1e8, 1e8 * 4**4, 5):
        f_star, lr_star, best = 0.02 * c**exponent_f, 0.3 * c**exponent_lr, 40 * c**-0.1
        runs = []
        centre = 2.0 ** round(math.log2(f_star))
        for j in range(-2, 3):
            f = centre * 2.0**j
            ladder = [lr_star * m * 2 ** (1 / 3) for m in lrs]  # the optimum between lrs
            loss = [best * (1 + 0.05 * math.log(f / f_star) ** 2 + 0.02 * math.log(lr / lr_star)
                            ** 2) for lr in ladder]
            runs.append({"d_sae": f, "steps": c / (6 * 64 * 32 * f), "compute": c,
                         "lrs": ladder, "loss": loss, "nmse": [v / 100 for v in loss]})
        levels.append(runs)
    return levels


def test_frontier_recovers_the_planted_optima_and_bootstrap_gives_finite_intervals():
    levels = _synthetic_levels()
    points = fit.frontier(levels)
    assert all(p["f_interior"] for p in points)
    for p in points:  # the parabola through three exact points has its vertex at the optimum
        assert abs(p["d_sae"] / (0.02 * p["compute"] ** 0.5) - 1) < 1e-6
    fits = fit.fit_frontier(points)
    assert abs(fits["d_sae"]["exponent"] - 0.5) < 1e-6
    assert abs(fits["steps"]["exponent"] - 0.5) < 1e-6  # S* = C / (6 B d F*)
    assert abs(fits["lr"]["exponent"] + 0.25) < 1e-6 and fits["lr"]["points"] == 5
    # loss* is the best measured loss: the planted one, times the grid's small offset from the
    # optimum in F (different at each level) and in lr (the same).
    assert abs(fits["loss"]["exponent"] + 0.1) < 0.01 and fits["loss"]["r2"] > 0.99
    spread = fit.bootstrap(levels, samples=50)
    for key in fit.FRONTIER_KEYS:
        assert math.isfinite(spread[key]["std"]) and spread[key]["q05"] <= spread[key]["q95"]
    assert spread["d_sae"]["q05"] <= 0.5 <= spread["d_sae"]["q95"]


def test_minimum_at_an_end_is_flagged_and_bounded_by_the_data():
    x, y, interior = fit.minimum(np.log([1, 2, 4]), [3.0, 2.0, 1.0])
    assert not interior and y == 1.0 and abs(x - math.log(4)) < 1e-12
    # A steep side does not drag the value below the measurements; the vertex stays within
    # half a grid step of the best point.
    x, y, interior = fit.minimum([0.0, 1.0, 2.0], [10.0, 1.0, 1.1])
    assert interior and y == 1.0 and 1.0 <= x <= 1.5


def test_grid_compiles_once_per_width_and_a_member_equals_a_single_run(sae_workdir, tmp_path):
    from monosem_jax.configs.sae import default as sae_default
    from monosem_jax.sae import train as sae_train

    s = dataclasses.replace(scaling_laws.PRESETS["smoke"], lrs=2)
    grid = scaling_laws.Grid(s, sae_workdir, str(tmp_path / "out"))
    first = grid.run(16, 30, [4e-3, 8e-3])
    grid.run(16, 20, [2e-3, 1.6e-2])  # other steps and learning rates: the same program
    grid.run(32, 20, [4e-3, 8e-3])
    assert grid.step_compilations() == {"16": 1, "32": 1} and grid.trained == 3
    again = scaling_laws.Grid(s, sae_workdir, str(tmp_path / "out"))  # a rerun trains nothing
    assert again.run(16, 30, [4e-3, 8e-3])["loss"] == first["loss"] and again.trained == 0

    config = sae_default.get_config("smoke")
    config.update(variant="anthropic_2024", name="alone", d_sae=16, steps=30, batch_size=64,
                  eval_rows=s.eval_rows, lr=8e-3, store=os.path.join(sae_workdir, "acts"))
    alone = sae_train.train_sae(config, str(tmp_path))
    for key in ("mse", "nmse", "l0"):
        np.testing.assert_allclose(first[key][1], alone[key], rtol=2e-3)


def test_the_report_section_reads_the_results(smoke_run, tmp_path):
    import shutil

    from monosem_jax import report_experiments

    out, printed = smoke_run
    shutil.copytree(out, tmp_path / "w" / "scaling_laws")
    os.makedirs(tmp_path / "w" / "report")
    text = "\n".join(report_experiments.scaling_lines(str(tmp_path / "w"),
                                                     str(tmp_path / "w" / "report")))
    exponent = printed["exponents"]["d_sae"]["exponent"]
    assert "## Scaling laws" in text and f"features ∝ C^{exponent:.3f}" in text
    assert (tmp_path / "w" / "report" / "scaling_loss_vs_compute.png").exists()
    assert report_experiments.scaling_lines(str(tmp_path), str(tmp_path)) == []  # no results
