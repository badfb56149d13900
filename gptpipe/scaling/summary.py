"""The compute-optimal sweep's report: the table, the sentences that say which size wins at each
budget and what the exponents mean, and the figures, written to the stage's folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from gptpipe.files import atomic_path
from gptpipe.scaling import figures
from gptpipe.scaling.fit import (
    CHINCHILLA_APPROACH2_EXPONENTS, CHINCHILLA_TOKENS_PER_PARAM, KAPLAN_N_OPT_EXPONENT, bracketed_budgets,
    compute_optimal_table,
)


def write_scaling_report(results: pd.DataFrame, out_dir: Path, *, regime: str) -> dict[str, Any]:
    """runs.csv, compute_optimal.csv/.md and three PNGs in out_dir; returns the summary."""
    table, summary = compute_optimal_table(results)
    summary = {"regime": regime, **summary}
    out_dir = Path(out_dir)
    _write_text(out_dir / "runs.csv", results.to_csv(index=False))
    _write_text(out_dir / "compute_optimal.csv", table.to_csv(index=False))
    _write_text(out_dir / "compute_optimal.md", _markdown(table, summary))
    figures.isoflop(results, table, out_dir / "isoflop.png")
    figures.envelope(results, out_dir / "envelope.png")
    figures.optimum_vs_budget(table, summary, out_dir / "n_opt.png")
    return summary


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _markdown(table: pd.DataFrame, summary: dict[str, Any]) -> str:
    lines = [
        "# Compute-optimal model size (Chinchilla approach 2: isoFLOP profiles)",
        "",
        f"Regime: {summary['regime']}. {summary['n_runs']} runs; each trains N parameters on "
        "D = C / 6N tokens, so every size at one budget spends the same FLOPs C (C = 6ND).",
        "",
        "| budget C (FLOPs) | best measured | N | test loss | fitted N_opt | fitted D_opt | fitted loss | vertex |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.budget:.3g} | {r.best_label} | {r.best_n_params:,} | {r.best_loss:.4f} | "
        f"{r.fitted_n_opt:.3g} | {r.fitted_d_opt:.3g} | {r.fitted_loss_opt:.4f} | {_vertex_word(r)} |"
        for r in table.itertuples()
    ]
    lines += ["", _winners_sentence(table), "", _exponents_sentence(summary), "", _data_regime_sentence(table, summary)]
    return "\n".join(lines) + "\n"


def _data_regime_sentence(table: pd.DataFrame, summary: dict[str, Any]) -> str:
    low, high = summary["tokens_per_param"]
    span = f"The runs see {low:.3g} to {high:.3g} training tokens per parameter"
    if high >= CHINCHILLA_TOKENS_PER_PARAM / 4:
        return f"{span}; Chinchilla's compute-optimal models see about {CHINCHILLA_TOKENS_PER_PARAM}."
    said = (f"{span}, far below the ~{CHINCHILLA_TOKENS_PER_PARAM} of Chinchilla's compute-optimal models: "
            "by that measure every run is data-starved, and smaller sizes should win.")
    bracketed = bracketed_budgets(table)
    if len(bracketed) < len(table):
        said += " Where the optimum is not bracketed, smaller shapes (or larger budgets) are needed to pin it down."
    if len(bracketed):
        ratio = bracketed["fitted_d_opt"] / bracketed["fitted_n_opt"]
        said += (f" Where it is bracketed, it sits at {ratio.min():.3g} to {ratio.max():.3g} tokens per "
                 "parameter. N counts the token embedding: most of a small shape's parameters (and, through the "
                 "tied output layer, of its FLOPs) but little of its capacity (Kaplan et al. 2020 find loss "
                 "follows the non-embedding parameters), so this ratio is not comparable with Chinchilla's.")
    return said


def _vertex_word(row: Any) -> str:
    if not row.fit_valid:
        return "no fit (measured best used)"
    return "inside the sizes run" if row.fit_inside else "extrapolated"


def _winners_sentence(table: pd.DataFrame) -> str:
    winners = "; ".join(f"at {r.budget:.3g} FLOPs, {r.best_label} (N={r.best_n_params:,}, loss {r.best_loss:.4f})"
                        for r in table.itertuples())
    labels = table["best_label"].tolist()
    trend = ("the winning size does not change across budgets" if len(set(labels)) == 1
             else "larger budgets favour larger models" if _grows(table["best_n_params"].tolist())
             else "the winning size does not grow steadily with the budget")
    return f"Lowest measured test loss: {winners}. Here {trend}."


def _grows(values: list[int]) -> bool:
    return all(a <= b for a, b in zip(values, values[1:])) and values[0] < values[-1]


def _exponents_sentence(summary: dict[str, Any]) -> str:
    excluded = summary["excluded_budgets"]
    caveats = ""
    if excluded:
        caveats += " Left out of the exponent fit: " + "; ".join(
            f"{e['budget']:.3g} FLOPs ({e['reason']})" for e in excluded) + "."
    if summary["extrapolated_budgets"]:
        caveats += (" The vertex lies outside the sizes run at "
                    + ", ".join(f"{b:.3g}" for b in summary["extrapolated_budgets"])
                    + " FLOPs, so those optima are extrapolations, left out of the exponent fit; "
                    "add sizes beyond them to pin them down.")
    if summary["n_opt_exponent"] is None:
        return f"Exponents: not fitted ({summary['exponent_note']}).{caveats}"
    a, b = CHINCHILLA_APPROACH2_EXPONENTS
    return (
        f"Fitted exponents over {len(summary['fitted_budgets'])} budgets: "
        f"N_opt ∝ C^{summary['n_opt_exponent']:.3f} ({_r2_words(summary['n_opt_r2'])}) and "
        f"D_opt ∝ C^{summary['d_opt_exponent']:.3f}; they sum to 1 because C = 6ND. "
        f"For comparison, Chinchilla's approach 2 found N_opt ∝ C^{a} and D_opt ∝ C^{b} "
        f"(Hoffmann et al. 2022, Table 2), Kaplan et al. (2020) N_opt ∝ C^{KAPLAN_N_OPT_EXPONENT}: "
        f"an exponent near 0.5 means parameters and tokens should grow equally with compute.{caveats}"
    )


def _r2_words(r2: float | None) -> str:
    return f"r² {r2:.3f}" if r2 is not None else "a line through 2 points: exact, so no r²; a third budget would test it"


# --------------------------------------------------------------------------- figures
