"""The fits and figures of experiments/scaling_laws.py (NumPy, matplotlib; not a script).

A run is one (F, S) program: dictionary size F, steps S, compute C, and per learning rate its
held-out loss and normalised MSE. Its optimum over the learning rate: lr* at the vertex of a
parabola in log lr, loss* the best member's; a compute level's optimum over F (the frontier
point: loss*, F*, S*, lr*): F* at the vertex of a parabola in log F through its best split and
that split's neighbours (Chinchilla's IsoFLOP method, "approach 2"), loss* the best split's;
each frontier quantity is then fitted as a power law of compute in log-log.
Uncertainty: the OLS standard error of each exponent, and a bootstrap over grid points (each
level's splits resampled with replacement, the frontier and the fits redone).
"""

from __future__ import annotations

import os

import numpy as np

FRONTIER_KEYS = ("loss", "nmse", "d_sae", "steps", "lr")


def power_law(x, y) -> dict:
    """y = coef · x^exponent by least squares in log10-log10: the fit, its R² (in log space), the
    exponent's standard error and the decades of x it spans."""
    lx, ly = np.log10(np.asarray(x, np.float64)), np.log10(np.asarray(y, np.float64))
    if lx.size < 2 or np.ptp(lx) == 0:
        raise ValueError(f"a power law needs >= 2 distinct x values, got {lx.size}")
    exponent, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (intercept + exponent * lx)
    total = np.sum((ly - ly.mean()) ** 2)
    r2 = 1.0 - np.sum(resid**2) / total if total > 0 else 1.0
    dof = lx.size - 2
    se = (np.sqrt(np.sum(resid**2) / dof / np.sum((lx - lx.mean()) ** 2)) if dof > 0
          else float("nan"))
    return {"coef": float(10**intercept), "exponent": float(exponent), "r2": float(r2),
            "exponent_se": float(se), "points": int(lx.size), "decades": float(np.ptp(lx))}


def parabola_vertex(x3, y3) -> float:
    """Where the parabola through three points has its minimum (an upward-open or flat fit:
    the lowest point)."""
    x3, y3 = np.asarray(x3, np.float64), np.asarray(y3, np.float64)
    a, b, _ = np.polyfit(x3, y3, 2)
    return float(-b / (2 * a)) if a > 0 else float(x3[int(np.argmin(y3))])


def minimum(x, y) -> tuple[float, float, bool]:
    """(where, the lowest y, interior?) of points y(x). Where: the vertex of the parabola through
    the lowest point and its two neighbours, kept within half a grid step of the lowest point;
    at an end, that end (and interior is False). The value is the lowest measured y, not the
    parabola's: near a learning rate or a width too small to train in time the curve rises
    steeply, and a parabola through that side dips well below every measured point."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    order = np.argsort(x)
    x, y = x[order], y[order]
    i = int(np.nanargmin(y))
    if i == 0 or i == x.size - 1 or not np.all(np.isfinite(y[i - 1 : i + 2])):
        return float(x[i]), float(y[i]), False
    xv = parabola_vertex(x[i - 1 : i + 2], y[i - 1 : i + 2])
    xv = float(np.clip(xv, (x[i - 1] + x[i]) / 2, (x[i] + x[i + 1]) / 2))
    return xv, float(y[i]), True


def run_optimum(run: dict) -> dict:
    """One run's optimum over its learning rates (`minimum` in log lr) and its best member's
    nmse."""
    lrs, loss = np.asarray(run["lrs"], np.float64), np.asarray(run["loss"], np.float64)
    log_lr, best, interior = minimum(np.log(lrs), loss)
    i = int(np.nanargmin(loss))
    return {"lr": float(np.exp(log_lr)), "loss": best, "nmse": float(run["nmse"][i]),
            "lr_interior": interior}


def level_optimum(runs: list[dict]) -> dict:
    """A compute level's frontier point from its runs (one per F, all at about one compute):
    F* and loss* by `minimum` in log F, nmse* the best split's; S* and lr* interpolated at F*
    (log-linear between the splits that bracket it)."""
    by_f = {}
    for run in runs:  # a width run twice (more learning rates) keeps its better optimum
        opt = {**run_optimum(run), "d_sae": run["d_sae"], "steps": run["steps"]}
        if run["d_sae"] not in by_f or opt["loss"] < by_f[run["d_sae"]]["loss"]:
            by_f[run["d_sae"]] = opt
    opts = [by_f[f] for f in sorted(by_f)]
    log_f = np.log([o["d_sae"] for o in opts])
    log_f_star, loss, interior = minimum(log_f, [o["loss"] for o in opts])

    def at_f_star(values):
        return float(np.exp(np.interp(log_f_star, log_f, np.log(values))))

    best = opts[int(np.argmin([o["loss"] for o in opts]))]

    return {"compute": float(np.exp(np.mean(np.log([r["compute"] for r in runs])))),
            "loss": loss, "d_sae": float(np.exp(log_f_star)), "f_interior": interior,
            "steps": at_f_star([o["steps"] for o in opts]),
            "lr": at_f_star([o["lr"] for o in opts]),
            "nmse": best["nmse"], "splits": len(opts),
            "best_split_lr_interior": best["lr_interior"]}


def frontier(levels: list[list[dict]]) -> list[dict]:
    return [level_optimum(runs) for runs in levels if runs]


def fit_frontier(points: list[dict]) -> dict:
    """A power law in compute for each frontier quantity."""
    compute = [p["compute"] for p in points]
    return {key: power_law(compute, [p[key] for p in points]) for key in FRONTIER_KEYS}


def bootstrap(levels: list[list[dict]], samples: int = 1000, seed: int = 0) -> dict:
    """Each frontier exponent's spread when every level's splits are resampled with replacement
    (the frontier and its fits redone): std and the 5th-95th percentile interval."""
    rng = np.random.default_rng(seed)
    exponents = {key: [] for key in FRONTIER_KEYS}
    for _ in range(samples):
        resampled = [[runs[i] for i in rng.integers(0, len(runs), len(runs))] for runs in levels]
        fits = fit_frontier(frontier(resampled))
        for key in FRONTIER_KEYS:
            exponents[key].append(fits[key]["exponent"])
    out = {}
    for key, values in exponents.items():
        v = np.asarray(values)
        v = v[np.isfinite(v)]
        out[key] = {"std": float(np.std(v)), "q05": float(np.quantile(v, 0.05)),
                    "q95": float(np.quantile(v, 0.95)), "samples": int(v.size)}
    return out


def plots(out: str, levels: list[list[dict]], points: list[dict], fits: dict,
          spread: dict) -> None:
    """loss_vs_compute.png, lr_vs_compute.png, optimal_shape.png and isoflop.png in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    colors = plt.cm.viridis(np.linspace(0, 0.9, len(levels)))
    compute = [p["compute"] for p in points]
    c_grid = np.geomspace(min(compute), max(compute))

    def save(fig, ax, name, xlabel="compute C = 6·B·d·F·S (FLOPs)", ylabel=""):
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel)
        low, high = ax.get_xlim()
        if high / low >= 10:  # a decade's label is there: the minor ones would crowd it
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=110)
        plt.close(fig)

    def frontier_and_law(ax, key, marker="o", label="frontier"):
        f = fits[key]
        ax.plot(compute, [p[key] for p in points], "k" + marker, label=label)
        ax.plot(c_grid, f["coef"] * c_grid ** f["exponent"], "k--", lw=1,
                label=f"∝ C^{f['exponent']:.3f} ± {spread[key]['std']:.3f} (R² {f['r2']:.3f})")

    def per_run(ax, value):
        for runs, color in zip(levels, colors, strict=True):
            for r in runs:
                v = np.atleast_1d(value(r))
                ax.scatter([r["compute"]] * v.size, v, s=6, color=color, alpha=0.4)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    per_run(ax, lambda r: r["loss"])
    frontier_and_law(ax, "loss")
    ax.set_ylim(top=1.5 * max(p["loss"] for p in points))  # diverged lrs off the top
    save(fig, ax, "loss_vs_compute.png", ylabel="held-out loss (MSE + λ·L1), every SAE")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    per_run(ax, lambda r: run_optimum(r)["lr"])
    frontier_and_law(ax, "lr")
    save(fig, ax, "lr_vs_compute.png", ylabel="optimal learning rate (dots: each split's)")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    frontier_and_law(ax, "d_sae", "o", "F*")
    frontier_and_law(ax, "steps", "s", "S*")
    save(fig, ax, "optimal_shape.png", ylabel="compute-optimal F* and S*")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for runs, point, color in zip(levels, points, colors, strict=True):
        ax.plot([r["d_sae"] for r in runs], [run_optimum(r)["loss"] for r in runs], "o-",
                color=color, label=f"C = {point['compute']:.2g}")
        ax.plot([point["d_sae"]], [point["loss"]], "*", color=color, ms=12)
    save(fig, ax, "isoflop.png", xlabel="dictionary size F (★: F*)",
         ylabel="best held-out loss over lr")
