"""The compute-optimal sweep's figures: isoFLOP profiles with their parabolas, the loss envelope
against FLOPs, and the fitted optimum against the budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from gptpipe.files import atomic_path  # noqa: E402
from gptpipe.scaling.fit import bracketed_budgets, fit_isoflop  # noqa: E402


def isoflop(results: pd.DataFrame, table: pd.DataFrame, path: Path) -> None:
    """Chinchilla Fig. 3 (left): test loss against N per budget, fitted parabola, vertex marked."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    colours = _budget_colours(table["budget"])
    for row, colour in zip(table.itertuples(), colours, strict=True):
        runs = results[(results["budget"] == row.budget) & np.isfinite(results["test_loss"])]
        ax.scatter(runs["n_params"], runs["test_loss"], color=colour, s=18, label=f"C = {row.budget:.2g} FLOPs")
        if row.fit_valid:
            fit = fit_isoflop(runs["n_params"].tolist(), runs["test_loss"].tolist())
            # Span the vertex too, so an extrapolated optimum sits on its curve.
            ends = np.log([runs["n_params"].min(), runs["n_params"].max(), row.fitted_n_opt])
            log_n = np.linspace(ends.min(), ends.max(), 100)
            ax.plot(np.exp(log_n), np.polyval([fit["a"], fit["b"], fit["c"]], log_n), color=colour, lw=1)
            ax.scatter([row.fitted_n_opt], [row.fitted_loss_opt], color=colour, marker="*", s=120,
                       edgecolors="black", linewidths=0.6, zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (embeddings included)")
    ax.set_ylabel("test loss")
    ax.set_title("IsoFLOP profiles: loss vs size at fixed compute (stars: fitted optima)")
    _finish(fig, ax, path)


def envelope(results: pd.DataFrame, path: Path) -> None:
    """Chinchilla Fig. 2: loss against FLOPs per size; the lower envelope is the best any size does."""
    runs = results[np.isfinite(results["test_loss"])]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for label, group in sorted(runs.groupby("label"), key=lambda item: item[1]["n_params"].iloc[0]):
        group = group.sort_values("budget")
        ax.plot(group["budget"], group["test_loss"], marker="o", markersize=3, lw=1,
                label=f"{label} (N={group['n_params'].iloc[0]:.2g})")
    envelope = runs.groupby("budget")["test_loss"].min().sort_index()
    ax.plot(envelope.index, envelope.values, color="black", ls="--", lw=1.5, label="lower envelope (best size at each C)")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs C = 6ND")
    ax.set_ylabel("test loss")
    ax.set_title("Loss vs compute per model size")
    _finish(fig, ax, path)


def optimum_vs_budget(table: pd.DataFrame, summary: dict[str, Any], path: Path) -> None:
    """Chinchilla Fig. 3 (centre, right): N_opt and D_opt against C with their power laws."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), dpi=110, sharex=True)
    for ax, quantity, ylabel in zip(axes, ("n_opt", "d_opt"), ("N_opt (parameters)", "D_opt (tokens)"),
                                    strict=True):
        inside = bracketed_budgets(table)
        outside = table[table["fit_valid"] & ~table["fit_inside"]]
        fallback = table[~table["fit_valid"]]
        ax.scatter(inside["budget"], inside[f"fitted_{quantity}"], color="C0", label="parabola vertex")
        if len(outside):
            ax.scatter(outside["budget"], outside[f"fitted_{quantity}"], color="C0", marker="x",
                       label="vertex outside the sizes (not fitted)")
        if len(fallback):
            ax.scatter(fallback["budget"], fallback[f"fitted_{quantity}"], facecolors="none",
                       edgecolors="C3", label="measured best (no fit)")
        exponent = summary[f"{quantity}_exponent"]
        if exponent is not None:
            budgets = np.geomspace(table["budget"].min(), table["budget"].max(), 50)
            ax.plot(budgets, summary[f"{quantity}_coefficient"] * budgets**exponent, color="C1",
                    label=f"∝ C^{exponent:.3f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # they overlap in a narrow panel
        ax.set_xlabel("training FLOPs C")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("Compute-optimal parameters and tokens vs budget")
    fig.tight_layout()
    _save(fig, path)


def _budget_colours(budgets: pd.Series) -> list[Any]:
    return list(plt.cm.viridis(np.linspace(0, 0.9, len(budgets))))


def _finish(fig: plt.Figure, ax: plt.Axes, path: Path) -> None:
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    # format= because atomic_path's temp name has no .png suffix for savefig to go by.
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
