"""Compute-optimal model size from isoFLOP profiles: given a FLOP budget C, which N is best?

Hoffmann et al. (2022), "Training Compute-Optimal Large Language Models" (Chinchilla), Sec. 3.2,
approach 2: train several model sizes N at each fixed budget C, with the token count D set by
C = 6 N D (Kaplan et al. 2020, Sec. 2.1; ``gptpipe.train.flops.flops_6nd``); fit a parabola to test loss
against log N per budget; its vertex is that budget's N_opt. A power law through the vertices,
N_opt ∝ C^a and D_opt ∝ C^b, answers the question for budgets not run. Chinchilla reports
a = 0.49, b = 0.51 for this approach (Table 2); Kaplan et al. found a = 0.73.

The training is not done here: ``plan_runs`` says which (shape, budget) runs to train, and the
results (one row per run) come back to ``compute_optimal_table``; ``gptpipe.scaling.summary`` writes the page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from gptpipe.errors import UserError
from gptpipe.train.flops import ModelShape, count_params

RESULT_COLUMNS = ("label", "n_params", "budget", "tokens", "test_loss")
# A parabola has three coefficients; with fewer distinct sizes it passes through every point
# and its vertex means nothing.
MIN_SIZES_PER_FIT = 3
MIN_BUDGETS_PER_POWER_LAW = 2
# Chinchilla approach 2, Table 2, and Kaplan et al. (2020) as quoted there: what a reader
# compares our exponents with.
CHINCHILLA_APPROACH2_EXPONENTS = (0.49, 0.51)
KAPLAN_N_OPT_EXPONENT = 0.73
# Chinchilla's compute-optimal models see about 20 training tokens per parameter (Hoffmann et
# al. 2022, Table 3); runs far below it are data-starved, and there the smallest size wins.
CHINCHILLA_TOKENS_PER_PARAM = 20
# A fitted quantity whose size against its data's is below this is zero up to rounding, and its sign
# must not decide anything: a profile straight in ln N fits a curvature of about ±4e-16, whose sign
# depends on the BLAS build. Rounding leaves at most ~1e-12 (measured over 50,000 random straight
# profiles: 3 to 11 sizes, ln N spans of 0.01 to 30 at ln N 3 to 28, slopes 1e-6 to 10); any
# curvature a loss measured to 6 digits can show is far above it.
FLAT_TOLERANCE = 1e-9


class ScalingInputError(UserError, ValueError):
    """Unusable budgets, shapes or results: a one-line message (a UserError for stages)."""


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class RunPlan:
    label: str  # "2x128": n_layer x n_embd, names the shape in tables and plots
    shape: ModelShape
    budget: float  # FLOPs C
    n_params: int  # N = count_params(shape): total, embeddings included, as Chinchilla counts
    tokens: int  # D = floor(C / (6 N))


def shape_label(shape: ModelShape) -> str:
    return f"{shape.n_layer}x{shape.n_embd}"


def plan_runs(
    shapes: Sequence[ModelShape], budgets: Sequence[float], *, min_tokens: int = 1
) -> list[RunPlan]:
    """Every (shape, budget) pair, budget-major; each run gets D = floor(C / 6N) tokens."""
    _check_unique_labels(shapes)
    _check_budgets(budgets)
    plans = []
    for budget in budgets:
        for shape in shapes:
            n_params = count_params(shape)
            # Fraction keeps C / 6N exact: for C a hair under 6ND the float quotient can round
            # up to D, planning one token more than the budget pays for (tested).
            tokens = math.floor(Fraction(budget) / (6 * n_params))
            if tokens < min_tokens:
                raise ScalingInputError(
                    f"budget {budget:.3g} FLOPs gives shape {shape_label(shape)} (N={n_params:,}) "
                    f"{tokens} tokens, fewer than min_tokens={min_tokens}; raise the budget to at "
                    f"least {6.0 * n_params * min_tokens:.3g} or drop the shape"
                )
            plans.append(RunPlan(shape_label(shape), shape, float(budget), n_params, tokens))
    return plans


def _check_unique_labels(shapes: Sequence[ModelShape]) -> None:
    labels = [shape_label(s) for s in shapes]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ScalingInputError(f"shapes: label(s) {', '.join(repeated)} appear more than once; "
                                "each shape needs its own n_layer x n_embd")


def _check_budgets(budgets: Sequence[float]) -> None:
    if not budgets:
        raise ScalingInputError("budgets: empty; give at least one FLOP budget")
    for budget in budgets:
        if not (math.isfinite(budget) and budget > 0):
            raise ScalingInputError(f"budgets: {budget!r} is not a positive finite FLOP count")
    if len(set(budgets)) != len(budgets):
        raise ScalingInputError(f"budgets: {list(budgets)} lists a budget more than once")


# --------------------------------------------------------------------------- fits


def fit_isoflop(n_params: Sequence[int], losses: Sequence[float]) -> dict[str, Any]:
    """Chinchilla approach 2 (Sec. 3.2) for one budget: loss = a (ln N)^2 + b ln N + c.

    The vertex N_opt = exp(-b / 2a) is the size that loss is lowest at for this budget. It exists
    only if the parabola opens upward (a > 0); ``inside`` says whether it lies within the sizes
    run, since a vertex outside them is an extrapolation the data does not pin down. A curvature
    that is zero up to rounding (``is_flat``) counts as none, whatever its sign.
    """
    log_n, loss = _fit_inputs(n_params, losses)
    a, b, c = (float(v) for v in np.polyfit(log_n, loss, 2))
    if is_flat(a, log_n, loss):
        return {"a": a, "b": b, "c": c, "n_opt": None, "loss_opt": None, "curvature_ok": False,
                "inside": False, "reason": f"no minimum: the profile is straight in ln N (no curvature; "
                                           f"the fitted a={a:.3g} is zero up to rounding)"}
    if a < 0:
        return {"a": a, "b": b, "c": c, "n_opt": None, "loss_opt": None, "curvature_ok": False,
                "inside": False, "reason": f"no minimum: the fitted parabola opens downward (a={a:.3g} < 0)"}
    log_n_opt = -b / (2 * a)
    # A nearly straight profile (a ~ 0) puts the vertex absurdly far out: exp() over- or underflows.
    if not math.log(np.finfo(float).tiny) < log_n_opt < math.log(np.finfo(float).max):
        return {"a": a, "b": b, "c": c, "n_opt": None, "loss_opt": None, "curvature_ok": True,
                "inside": False, "reason": f"no usable minimum: a={a:.3g} is so flat that N_opt "
                                           f"{'overflows' if log_n_opt > 0 else 'underflows'}"}
    return {
        "a": a, "b": b, "c": c,
        "n_opt": math.exp(log_n_opt),
        "loss_opt": c - b * b / (4 * a),  # the parabola's value at its vertex
        "curvature_ok": True,
        "inside": bool(log_n.min() <= log_n_opt <= log_n.max()),
        "reason": None,
    }


def is_flat(a: float, log_n: np.ndarray, loss: np.ndarray) -> bool:
    """Whether curvature a bends the profile, over the sizes run (a * (ln N range)^2), by no more
    than FLAT_TOLERANCE of the loss range (or of the losses themselves, where the range is smaller:
    rounding is relative to the values, and a range near it certifies no curvature)."""
    bend = abs(a) * float(np.ptp(log_n)) ** 2
    return bend <= FLAT_TOLERANCE * max(float(np.ptp(loss)), float(np.abs(loss).max()))


def _fit_inputs(n_params: Sequence[int], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(n_params, dtype=float)
    loss = np.asarray(losses, dtype=float)
    if n.shape != loss.shape or n.ndim != 1:
        raise ScalingInputError(f"fit_isoflop: {n.size} sizes but {loss.size} losses; give one loss per size")
    if len(np.unique(n)) < MIN_SIZES_PER_FIT:
        raise ScalingInputError(f"fit_isoflop: {len(np.unique(n))} distinct sizes; a parabola needs at "
                                f"least {MIN_SIZES_PER_FIT}")
    if not (np.all(np.isfinite(n)) and np.all(n > 0) and np.all(np.isfinite(loss))):
        raise ScalingInputError("fit_isoflop: sizes must be positive and finite, losses finite")
    return np.log(n), loss


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
    """y = k x^e by least squares on ln y = e ln x + ln k; r2 is measured in that log space.

    r2 is None from two distinct x: a line passes through any two points, so it would be 1 whatever
    the data, and says nothing about whether y follows a power law.
    """
    log_x, log_y = _log_pairs(x, y)
    exponent, log_k = (float(v) for v in np.polyfit(log_x, log_y, 1))
    residual = log_y - (exponent * log_x + log_k)
    spread = float(np.sum((log_y - log_y.mean()) ** 2))
    # Constant y (up to rounding: its mean is rounded, so the spread may be 1e-32 rather than 0) is
    # fitted exactly by exponent 0; call that a perfect fit rather than rounding over rounding.
    constant = float(np.ptp(log_y)) <= FLAT_TOLERANCE * max(1.0, float(np.abs(log_y).max()))
    if len(np.unique(log_x)) < 3:
        r2 = None
    else:
        r2 = 1.0 if constant else 1.0 - float(np.sum(residual**2)) / spread
    return {"exponent": exponent, "coefficient": math.exp(log_k), "r2": r2}


def _log_pairs(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ScalingInputError(f"fit_power_law: {xs.size} x values but {ys.size} y values")
    if len(np.unique(xs)) < MIN_BUDGETS_PER_POWER_LAW:
        raise ScalingInputError(f"fit_power_law: {len(np.unique(xs))} distinct x values; a line needs "
                                f"at least {MIN_BUDGETS_PER_POWER_LAW}")
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys)) and np.all(xs > 0) and np.all(ys > 0)):
        raise ScalingInputError("fit_power_law: x and y must be positive and finite (they are logged)")
    return np.log(xs), np.log(ys)


# --------------------------------------------------------------------------- the table


def compute_optimal_table(results: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-budget optimum (measured and fitted) and the exponents of N_opt and D_opt against C.

    A budget whose parabola cannot be fitted (fewer than 3 sizes, a <= 0) keeps its measured
    best in the table but is left out of the exponent fit: a measured best is a grid point, and
    a grid point would bend the power law toward the grid. So is a budget whose vertex lies
    outside the sizes run: there the parabola's tail, not a measured minimum, places N_opt
    (on a profile still falling at its smallest size it can land orders of magnitude away).
    """
    runs, dropped = _usable_runs(results)
    rows = [_budget_row(budget, group) for budget, group in runs.groupby("budget", sort=True)]
    table = pd.DataFrame(rows)
    valid = table[table["fit_valid"]]
    bracketed = bracketed_budgets(table)
    summary: dict[str, Any] = {
        "n_runs": len(runs),
        "budgets": [float(b) for b in table["budget"]],
        "fitted_budgets": [float(b) for b in bracketed["budget"]],
        "excluded_budgets": [{"budget": float(r.budget), "reason": r.fit_note}
                             for r in table.itertuples() if not r.fit_valid],
        "extrapolated_budgets": [float(r.budget) for r in valid.itertuples() if not r.fit_inside],
        "dropped_runs": dropped,
        # Each run is meant to spend exactly C; D is rounded down to whole tokens, so 6ND < C.
        "max_budget_shortfall": float((1 - 6.0 * runs["n_params"] * runs["tokens"] / runs["budget"]).max()),
        "tokens_per_param": [float((runs["tokens"] / runs["n_params"]).min()),
                             float((runs["tokens"] / runs["n_params"]).max())],
    }
    summary.update(_exponents(bracketed))
    return table.drop(columns="fit_note"), summary


def bracketed_budgets(table: pd.DataFrame) -> pd.DataFrame:
    """The budgets whose fitted vertex lies inside the sizes run: the only ones the exponents use."""
    return table[table["fit_valid"] & table["fit_inside"]]


def _usable_runs(results: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    missing = [c for c in RESULT_COLUMNS if c not in results.columns]
    if missing:
        raise ScalingInputError(f"results: missing column(s) {', '.join(missing)}; need {', '.join(RESULT_COLUMNS)}")
    runs = results.loc[:, list(RESULT_COLUMNS)].copy()
    if runs.duplicated(["label", "budget"]).any():
        raise ScalingInputError("results: a (label, budget) pair appears twice; give one row per run")
    if not ((runs["n_params"] > 0).all() and (runs["budget"] > 0).all()):
        raise ScalingInputError("results: n_params and budget must be positive")
    # A diverged run (NaN or inf loss) is dropped and named rather than silently poisoning a fit.
    finite = np.isfinite(runs["test_loss"].astype(float))
    dropped = [{"label": str(r.label), "budget": float(r.budget), "reason": "non-finite test_loss"}
               for r in runs[~finite].itertuples()]
    if not finite.any():
        raise ScalingInputError("results: no run has a finite test_loss")
    return runs[finite], dropped


def _budget_row(budget: float, runs: pd.DataFrame) -> dict[str, Any]:
    best = runs.loc[runs["test_loss"].idxmin()]
    fit = _fit_or_reason(runs)
    valid = fit["n_opt"] is not None
    # Without a usable parabola the measured best stands in, flagged by fit_valid=False.
    n_opt = fit["n_opt"] if valid else float(best["n_params"])
    return {
        "budget": float(budget),
        "best_label": str(best["label"]),
        "best_n_params": int(best["n_params"]),
        "best_loss": float(best["test_loss"]),
        "fitted_n_opt": n_opt,
        "fitted_d_opt": float(budget) / (6.0 * n_opt),  # C = 6 N D solved for D
        "fitted_loss_opt": fit["loss_opt"] if valid else float(best["test_loss"]),
        "fit_inside": bool(fit["inside"]),
        "fit_valid": valid,
        "fit_note": fit["reason"],
    }


def _fit_or_reason(runs: pd.DataFrame) -> dict[str, Any]:
    sizes = runs["n_params"].nunique()
    if sizes < MIN_SIZES_PER_FIT:
        return {"n_opt": None, "loss_opt": None, "inside": False,
                "reason": f"{sizes} size(s) with a finite loss; a parabola needs {MIN_SIZES_PER_FIT}"}
    return fit_isoflop(runs["n_params"].tolist(), runs["test_loss"].tolist())


def _exponents(bracketed: pd.DataFrame) -> dict[str, Any]:
    if len(bracketed) < MIN_BUDGETS_PER_POWER_LAW:
        empty = {f"{q}_{k}": None for q in ("n_opt", "d_opt") for k in ("exponent", "coefficient", "r2")}
        return {**empty, "exponent_note": f"{len(bracketed)} budget(s) with a fitted minimum inside the sizes "
                                          f"run; exponents need {MIN_BUDGETS_PER_POWER_LAW}"}
    n_law = fit_power_law(bracketed["budget"], bracketed["fitted_n_opt"])
    d_law = fit_power_law(bracketed["budget"], bracketed["fitted_d_opt"])
    # ln D = ln C - ln 6 - ln N exactly, and least squares is linear in y, so a + b = 1 to
    # rounding; anything else is a bug in how D_opt was derived.
    assert abs(n_law["exponent"] + d_law["exponent"] - 1) < 1e-9, (n_law, d_law)
    return {
        "n_opt_exponent": n_law["exponent"], "n_opt_coefficient": n_law["coefficient"], "n_opt_r2": n_law["r2"],
        "d_opt_exponent": d_law["exponent"], "d_opt_coefficient": d_law["coefficient"], "d_opt_r2": d_law["r2"],
        "exponent_note": None,
    }


# --------------------------------------------------------------------------- the report
