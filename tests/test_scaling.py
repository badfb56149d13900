"""Tests for gptpipe.scaling.fit: run planning, isoFLOP parabola fits, power laws, the report.

The compute-optimal check uses data generated from Chinchilla's fitted loss law (Hoffmann et al.
2022, eq. 10 and Sec. D.2: E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28), whose optimum is known
in closed form: N_opt = G (C/6)^(beta / (alpha+beta)), G = (alpha A / beta B)^(1 / (alpha+beta)).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from gptpipe.train.flops import ModelShape, count_params, flops_6nd
from gptpipe.scaling.summary import write_scaling_report
from gptpipe.scaling.fit import (
    RunPlan,
    compute_optimal_table,
    fit_isoflop,
    fit_power_law,
    plan_runs,
)

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
N_OPT_EXPONENT = BETA / (ALPHA + BETA)  # ~0.4516
TINY = ModelShape(n_layer=2, n_embd=128, n_head=2)
SMALL = ModelShape(n_layer=4, n_embd=256, n_head=4)
REPORT_SHAPES = [ModelShape(n_layer=n, n_embd=d, n_head=h)
                 for n, d, h in [(2, 128, 2), (4, 256, 4), (6, 384, 6), (8, 512, 8), (12, 768, 12)]]
REPORT_FILES = {"runs.csv", "compute_optimal.csv", "compute_optimal.md",
                "isoflop.png", "envelope.png", "n_opt.png"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chinchilla_loss(n_params: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    return E + A / n_params**ALPHA + B / tokens**BETA


def analytic_n_opt(budget: float) -> float:
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    return g * (budget / 6) ** N_OPT_EXPONENT


def law_results(grid_by_budget: dict[float, np.ndarray]) -> pd.DataFrame:
    """One row per (N, C) with the law's loss at D = C / 6N (the exact D, not its floor)."""
    rows = []
    for budget, grid in grid_by_budget.items():
        for n in grid:
            d = budget / (6 * n)
            rows.append({"label": f"N{n:.4g}", "n_params": int(round(n)), "budget": budget,
                         "tokens": math.floor(d), "test_loss": float(chinchilla_loss(n, d))})
    return pd.DataFrame(rows)


def parabola_losses(n: np.ndarray, n_opt: float, curvature: float, noise: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    return 2.5 + curvature * (np.log(n) - math.log(n_opt)) ** 2 + noise * rng.standard_normal(n.size)


# --------------------------------------------------------------------------- plan_runs


def test_plan_runs_gives_every_pair_floor_c_over_6n_tokens():
    budgets = [1e12, 3.3e13 + 7]
    plans = plan_runs([TINY, SMALL], budgets)
    assert [(p.label, p.budget) for p in plans] == [
        ("2x128", 1e12), ("4x256", 1e12), ("2x128", 3.3e13 + 7), ("4x256", 3.3e13 + 7)]
    for plan in plans:
        assert plan.n_params == count_params(plan.shape)
        assert plan.tokens == int(plan.budget) // (6 * plan.n_params)  # integer floor, no rounding
        assert flops_6nd(plan.n_params, plan.tokens) <= plan.budget < flops_6nd(plan.n_params, plan.tokens + 1)


def test_plan_runs_floors_exactly_at_float_edges():
    n = count_params(TINY)
    (plan,) = plan_runs([TINY], [6.0 * n * 12_345])
    assert plan == RunPlan("2x128", TINY, 6.0 * n * 12_345, n, 12_345)
    # One float step under 6 N D: C / 6N in floats rounds up to exactly D; the true floor is D - 1.
    below = math.nextafter(6.0 * n * 2_457_932_777_651, 0)
    (plan,) = plan_runs([TINY], [below])
    assert plan.tokens == int(below) // (6 * n) == 2_457_932_777_650


def test_plan_runs_refuses_a_budget_too_small_for_a_shape():
    too_small = 6.0 * count_params(SMALL) * 0.5  # enough for TINY, half a token for SMALL
    with pytest.raises(ValueError, match=r"budget .* 4x256 .* 0 tokens") as err:
        plan_runs([TINY, SMALL], [too_small])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="min_tokens=1000"):
        plan_runs([TINY], [6.0 * count_params(TINY) * 999], min_tokens=1000)


def test_plan_runs_refuses_repeated_labels_and_budgets():
    with pytest.raises(ValueError, match="2x128"):
        plan_runs([TINY, ModelShape(n_layer=2, n_embd=128, n_head=4)], [1e15])
    with pytest.raises(ValueError, match="more than once"):
        plan_runs([TINY], [1e15, 1e15])


# --------------------------------------------------------------------------- fits


def test_fit_isoflop_recovers_a_known_optimum():
    n = np.geomspace(1e6, 1e9, 9)
    fit = fit_isoflop(n.tolist(), parabola_losses(n, 3.0e7, 0.05, noise=1e-4).tolist())
    assert fit["n_opt"] == pytest.approx(3.0e7, rel=0.01)
    assert fit["loss_opt"] == pytest.approx(2.5, abs=1e-3)
    assert fit["a"] == pytest.approx(0.05, rel=0.01)
    assert fit["curvature_ok"] and fit["inside"]


def test_fit_isoflop_flags_an_optimum_outside_the_sizes_run():
    n = np.geomspace(1e6, 1e7, 5)
    fit = fit_isoflop(n.tolist(), parabola_losses(n, 1e8, 0.05).tolist())
    assert fit["n_opt"] == pytest.approx(1e8, rel=1e-6)
    assert not fit["inside"]


def test_fit_isoflop_without_a_minimum_has_no_optimum():
    n = np.geomspace(1e6, 1e9, 7)
    fit = fit_isoflop(n.tolist(), parabola_losses(n, 3.0e7, -0.05).tolist())
    assert fit["n_opt"] is None and fit["loss_opt"] is None
    assert not fit["curvature_ok"] and not fit["inside"]
    assert "no minimum" in fit["reason"]


def test_fit_isoflop_on_a_straight_profile_has_no_usable_minimum():
    # Each doubling of N adds 0.5: straight in ln N, so the fitted a is zero up to rounding (one
    # install fitted a = -3.6e-16 and called it "opens downward"): no curvature, whatever its sign.
    fit = fit_isoflop([1e6, 2e6, 4e6], [5.0, 5.5, 6.0])
    assert fit["n_opt"] is None and "straight in ln N" in fit["reason"]
    assert not fit["curvature_ok"] and not fit["inside"]


SIZES = np.array([1e6, 2e6, 4e6, 8e6, 1.6e7])


def bent_profile(share: float, slope: float = 0.5) -> list[float]:
    """slope per doubling of N, plus a curvature a that bends the profile over the sizes by `share`
    of its range: a (ln N range)^2 = share * range (straight when share is 0)."""
    log_n = np.log(SIZES)
    straight = 5.0 + slope * (log_n - log_n[0]) / math.log(2)
    a = share * np.ptp(straight) / np.ptp(log_n) ** 2
    return (straight + a * (log_n - log_n.mean()) ** 2).tolist()


@pytest.mark.parametrize("n", [3, 4, 5])
@pytest.mark.parametrize("slope", [0.5, -0.5, 1e-3, 0.0])
def test_a_straight_or_constant_profile_is_flat_not_concave_or_convex(n, slope):
    fit = fit_isoflop(SIZES[:n].tolist(), bent_profile(0.0, slope)[:n])
    assert fit["n_opt"] is None and not fit["curvature_ok"]
    assert "straight in ln N" in fit["reason"], fit["reason"]


@pytest.mark.parametrize("share", [1e-12, -1e-12])
def test_curvature_below_the_tolerance_counts_as_none_whatever_its_sign(share):
    fit = fit_isoflop(SIZES.tolist(), bent_profile(share))
    assert fit["a"] != 0 and (fit["a"] > 0) == (share > 0)  # a real curvature, too small to count
    assert fit["n_opt"] is None and "straight in ln N" in fit["reason"]


def test_curvature_above_the_tolerance_counts_by_its_sign():
    concave = fit_isoflop(SIZES.tolist(), bent_profile(-1e-6))
    assert concave["n_opt"] is None and "opens downward" in concave["reason"]
    assert "opens downward" in fit_isoflop(SIZES.tolist(), bent_profile(-0.5))["reason"]
    # Convex but nearly straight: the vertex lies ~1e6 e-folds away, an optimum no float can hold.
    barely = fit_isoflop(SIZES.tolist(), bent_profile(1e-6))
    assert barely["curvature_ok"] and barely["n_opt"] is None and "underflows" in barely["reason"]
    assert "overflows" in fit_isoflop(SIZES.tolist(), bent_profile(1e-6, slope=-0.5))["reason"]
    # Clearly convex with the vertex inside the sizes: a fit.
    convex = fit_isoflop(SIZES.tolist(), parabola_losses(SIZES, 4e6, 0.05).tolist())
    assert convex["reason"] is None and convex["inside"] and convex["n_opt"] == pytest.approx(4e6, rel=1e-6)


def test_fit_isoflop_needs_three_sizes():
    with pytest.raises(ValueError, match="at least 3"):
        fit_isoflop([1e6, 1e7], [3.0, 2.9])
    with pytest.raises(ValueError, match="at least 3"):
        fit_isoflop([1e6, 1e6, 1e7], [3.0, 3.1, 2.9])  # three points, two sizes


def test_fit_power_law_recovers_a_known_exponent():
    x = np.geomspace(1e15, 1e20, 6)
    fit = fit_power_law(x.tolist(), (3.2 * x**0.37).tolist())
    assert fit["exponent"] == pytest.approx(0.37, abs=1e-9)
    assert fit["coefficient"] == pytest.approx(3.2, rel=1e-6)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)
    noisy = fit_power_law(x.tolist(), (3.2 * x**0.37 * np.array([1, 1.3, 0.8, 1.2, 0.9, 1.1])).tolist())
    assert noisy["r2"] < 0.999
    with pytest.raises(ValueError, match="at least 2"):
        fit_power_law([1e15], [3.0])


# --------------------------------------------------------------------------- the table

LAW_BUDGETS = np.geomspace(1e18, 1e21, 7)
# Every size at every budget, as plan_runs does: the optima move across this fixed grid, and the
# parabola's bias shifts with where the optimum sits in it (~0.02 on the exponent).
FIXED_GRID = {b: np.geomspace(1e7, 1e10, 13) for b in LAW_BUDGETS}
# Chinchilla's own design: 9 sizes spanning a factor 10 either side of each budget's optimum;
# the bias is then the same factor at every budget and cancels out of the exponent.
CENTRED_GRID = {b: analytic_n_opt(b) * np.geomspace(0.1, 10, 9) for b in LAW_BUDGETS}


@pytest.mark.parametrize("grid, tolerance", [(FIXED_GRID, 0.03), (CENTRED_GRID, 0.002)], ids=["fixed", "centred"])
def test_compute_optimal_table_recovers_chinchilla_exponents(grid, tolerance):
    results = law_results(grid)
    table, summary = compute_optimal_table(results)

    assert summary["n_opt_exponent"] == pytest.approx(N_OPT_EXPONENT, abs=tolerance)
    assert summary["d_opt_exponent"] == pytest.approx(1 - N_OPT_EXPONENT, abs=tolerance)
    assert summary["n_opt_exponent"] + summary["d_opt_exponent"] == pytest.approx(1.0, abs=1e-9)
    assert summary["excluded_budgets"] == [] and summary["extrapolated_budgets"] == []
    assert table["budget"].tolist() == pytest.approx(sorted(grid))
    assert table["fitted_d_opt"].to_numpy() == pytest.approx(table["budget"] / (6 * table["fitted_n_opt"]))
    for row in table.itertuples():
        sizes = grid[row.budget]
        nearest = sizes[np.argmin(np.abs(np.log(sizes) - math.log(analytic_n_opt(row.budget))))]
        assert row.best_label == f"N{nearest:.4g}"
        assert row.fitted_n_opt == pytest.approx(analytic_n_opt(row.budget), rel=0.15)
        assert row.fit_inside and row.fit_valid


def test_budgets_without_a_valid_fit_fall_back_and_leave_the_exponent_fit():
    results = law_results(CENTRED_GRID)
    _, clean = compute_optimal_table(results)
    two_sizes = pd.DataFrame({"label": ["s", "m"], "n_params": [10**6, 10**7], "budget": 1e15,
                              "tokens": [1, 1], "test_loss": [4.0, 3.5]})
    n = np.geomspace(1e8, 1e9, 5)
    concave = pd.DataFrame({"label": [f"c{i}" for i in range(5)], "n_params": n.astype(int), "budget": 1e22,
                            "tokens": 1, "test_loss": parabola_losses(n, 3e8, -0.05)})
    table, summary = compute_optimal_table(pd.concat([results, two_sizes, concave], ignore_index=True))

    assert [e["budget"] for e in summary["excluded_budgets"]] == [1e15, 1e22]
    assert "a parabola needs 3" in summary["excluded_budgets"][0]["reason"]
    assert "no minimum" in summary["excluded_budgets"][1]["reason"]
    assert summary["n_opt_exponent"] == pytest.approx(clean["n_opt_exponent"], abs=1e-12)
    fallback = table.set_index("budget").loc[1e15]
    assert not fallback["fit_valid"] and not fallback["fit_inside"]
    assert (fallback["best_label"], fallback["fitted_n_opt"], fallback["fitted_loss_opt"]) == ("m", 1e7, 3.5)
    assert fallback["fitted_d_opt"] == pytest.approx(1e15 / 6e7)


def test_a_diverged_run_is_dropped_and_named():
    results = law_results(CENTRED_GRID)
    results.loc[0, "test_loss"] = float("nan")
    table, summary = compute_optimal_table(results)
    assert summary["dropped_runs"] == [{"label": results.loc[0, "label"], "budget": results.loc[0, "budget"],
                                        "reason": "non-finite test_loss"}]
    assert summary["n_runs"] == len(results) - 1
    assert np.isfinite(table["fitted_n_opt"]).all()


# --------------------------------------------------------------------------- the report


def report_results() -> pd.DataFrame:
    """plan_runs over real GPT-2 shapes, losses from the Chinchilla law at each run's N and D."""
    plans = plan_runs(REPORT_SHAPES, [5e16, 1.5e17, 5e17])
    return pd.DataFrame([{"label": p.label, "n_params": p.n_params, "budget": p.budget, "tokens": p.tokens,
                          "test_loss": float(chinchilla_loss(p.n_params, p.tokens))} for p in plans])


def test_write_scaling_report_writes_readable_files_and_overwrites(tmp_path):
    results = report_results()
    summary = write_scaling_report(results, tmp_path, regime="test regime: Chinchilla law")
    table, _ = compute_optimal_table(results)

    assert {p.name for p in tmp_path.iterdir()} == REPORT_FILES
    markdown = (tmp_path / "compute_optimal.md").read_text()
    assert "test regime: Chinchilla law" in markdown
    for row in table.itertuples():
        assert f"at {row.budget:.3g} FLOPs, {row.best_label} (N={row.best_n_params:,}" in markdown
    assert f"N_opt ∝ C^{summary['n_opt_exponent']:.3f}" in markdown
    assert f"D_opt ∝ C^{summary['d_opt_exponent']:.3f}" in markdown
    low, high = summary["tokens_per_param"]
    assert 0 < low <= high and f"{low:.3g} to {high:.3g} training tokens per parameter" in markdown
    assert len(set(table["best_label"])) > 1  # the data is built so that the winner changes
    for name in ("isoflop.png", "envelope.png", "n_opt.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "runs.csv"), results)
    assert pd.read_csv(tmp_path / "compute_optimal.csv")["best_label"].tolist() == table["best_label"].tolist()
    json.dumps(summary, allow_nan=False)

    again = write_scaling_report(results.iloc[::-1], tmp_path, regime="second run")
    assert {p.name for p in tmp_path.iterdir()} == REPORT_FILES  # no temp files left beside them
    assert "second run" in (tmp_path / "compute_optimal.md").read_text()
    assert "test regime" not in (tmp_path / "compute_optimal.md").read_text()
    assert again["n_opt_exponent"] == pytest.approx(summary["n_opt_exponent"], abs=1e-12)


def test_the_page_says_when_every_run_is_data_starved(tmp_path):
    # Three sizes at one budget, each seeing well under 1 token per parameter: the smallest wins.
    n = [1_000_000, 2_000_000, 4_000_000]
    starved = pd.DataFrame({"label": ["s", "m", "l"], "n_params": n, "budget": [6e11] * 3,
                            "tokens": [100_000, 50_000, 25_000], "test_loss": [5.0, 5.5, 6.0]})
    summary = write_scaling_report(starved, tmp_path, regime="starved")
    assert summary["tokens_per_param"] == pytest.approx([25_000 / 4e6, 0.1])
    page = (tmp_path / "compute_optimal.md").read_text()
    assert "data-starved" in page and "Where the optimum is not bracketed" in page
    assert "Where it is bracketed" not in page
    # The same starved runs with a minimum in the middle: its tokens per parameter are stated.
    write_scaling_report(starved.assign(test_loss=[5.5, 5.0, 5.6]), tmp_path, regime="starved")
    page = (tmp_path / "compute_optimal.md").read_text()
    assert "data-starved" in page and "Where the optimum is not bracketed" not in page
    assert "Where it is bracketed, it sits at 0.0" in page
    # The Chinchilla-law grid spends budgets near the optimum: no such warning.
    summary = write_scaling_report(report_results(), tmp_path, regime="law")
    assert summary["tokens_per_param"][1] > 5
    assert "data-starved" not in (tmp_path / "compute_optimal.md").read_text()


def test_a_power_law_through_constant_y_is_exact_even_off_by_one_ulp():
    # y equal up to its last bit: the spread and the residuals are both rounding, and their ratio
    # once gave r2 = -2.67. Exponent 0 fits such y exactly.
    x = [1e12, 3e12, 1e13, 3e13]
    y = [7.0, math.nextafter(7.0, 8.0), 7.0, math.nextafter(7.0, 6.0)]
    fit = fit_power_law(x, y)
    assert fit["r2"] == 1.0 and fit["exponent"] == pytest.approx(0.0, abs=1e-12)
    assert fit_power_law(x, [7.0, 7.0 * (1 + 1e-6), 7.0, 7.0])["r2"] < 1.0  # a real (if small) spread


def test_a_power_law_through_two_budgets_has_no_r2():
    # Any two points lie on a line: r² would be 1 for any data, so it is withheld, not reported as 1.
    fit = fit_power_law([1e12, 4e12], [1e6, 2e6])
    assert fit["exponent"] == pytest.approx(0.5, abs=1e-12)
    assert fit["r2"] is None
    assert fit_power_law([1e12, 4e12, 1.6e13], [1e6, 2e6, 4.2e6])["r2"] < 1.0


def test_an_optimum_outside_the_sizes_run_stays_in_the_table_but_not_in_the_exponents(tmp_path):
    # A profile still falling at its smallest size: the parabola puts N_opt 100x below the grid.
    results = law_results(CENTRED_GRID)
    _, clean = compute_optimal_table(results)
    n = np.geomspace(1e8, 1e9, 5)
    falling = pd.DataFrame({"label": [f"f{i}" for i in range(5)], "n_params": n.astype(int), "budget": 1e22,
                            "tokens": 1, "test_loss": parabola_losses(n, 1e6, 0.05)})
    both = pd.concat([results, falling], ignore_index=True)
    table, summary = compute_optimal_table(both)

    row = table.set_index("budget").loc[1e22]
    assert row["fit_valid"] and not row["fit_inside"] and row["fitted_n_opt"] == pytest.approx(1e6, rel=1e-6)
    assert summary["extrapolated_budgets"] == [1e22] and 1e22 not in summary["fitted_budgets"]
    assert summary["n_opt_exponent"] == pytest.approx(clean["n_opt_exponent"], abs=1e-12)
    write_scaling_report(both, tmp_path, regime="test")
    assert "1e+22 FLOPs, so those optima are extrapolations, left out of the exponent fit" in (
        tmp_path / "compute_optimal.md").read_text()
