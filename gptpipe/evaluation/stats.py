"""Intervals and win rates: how sure a mean is, and how often one model's answer beats another's."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np


def mean_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The normal-approximation interval of the mean (n is 200 by default: the CLT is fine there)."""
    n = len(values)
    if n < 2:
        return (float("nan"), float("nan"))
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * values.std(ddof=1) / math.sqrt(n)
    return float(values.mean() - half), float(values.mean() + half)


def proportion_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson's score interval of a rate: inside [0, 1], and not [0, 0] when nothing succeeded (the
    normal approximation is both at 0 of 200: 'no correct answer' is not 'certainly none ever')."""
    if n == 0:
        return (float("nan"), float("nan"))
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(later: np.ndarray, earlier: np.ndarray, confidence: float) -> dict[str, float | int | str]:
    """mean(later - earlier) over the same prompts (0/1 outcomes: a difference of rates), its normal-
    approximation interval on the per-prompt differences, and the verdict it supports.

    The verdict is "no difference" when the interval holds 0, or when fewer than MIN_DISCORDANT prompts
    were answered differently: with so few, the interval's normal approximation means nothing (at 0
    differing prompts it is [0, 0], which would claim certainty).
    """
    d = later.astype(float) - earlier.astype(float)
    discordant = int(np.count_nonzero(d))
    low, high = mean_interval(d, confidence)
    return {"difference": float(d.mean()), "ci_low": low, "ci_high": high, "discordant": discordant,
            "verdict": verdict_of(low, high, discordant), "seeds": 1}


def verdict_of(low: float, high: float, discordant: int) -> str:
    """The rule every paired verdict follows: "no difference" when the interval holds 0 or too few
    prompts were answered differently to trust it, else "higher" or "lower"."""
    if discordant < MIN_DISCORDANT or low <= 0 <= high:
        return "no difference"
    return "higher" if low > 0 else "lower"


# Prompts answered differently below which a paired difference of rates is "no difference".
MIN_DISCORDANT = 10


def seeded_difference(per_seed: Sequence[tuple[np.ndarray, np.ndarray]], confidence: float) -> dict[str, Any]:
    """paired_difference over several training runs (seeds), each pair of arrays one seed's two models
    (or two points) on that seed's prompts. The interval covers the run, not only the prompts.

    Each seed k gives its own difference of rates d_k. The interval is Student's t over the d_k (a
    paired test on per-seed differences, S − 1 degrees of freedom): d_k varies with the data's draw,
    the init and the order, and with the prompts, so its spread holds all of them. Three seeds can by
    chance agree closely, so the interval is never narrower than the prompt-level one of the pooled
    answers (paired_difference on every (seed, prompt)), which is what one long run would give.
    """
    if len(per_seed) == 1:
        return paired_difference(*per_seed[0], confidence)
    diffs = np.array([np.mean(a.astype(float) - b.astype(float)) for a, b in per_seed])
    pooled = paired_difference(np.concatenate([a for a, _ in per_seed]), np.concatenate([b for _, b in per_seed]), confidence)
    seeds = len(diffs)
    t = student_t_quantile(0.5 + confidence / 2, seeds - 1)
    half = max(t * diffs.std(ddof=1) / math.sqrt(seeds), (pooled["ci_high"] - pooled["ci_low"]) / 2)
    mean = float(diffs.mean())
    low, high = mean - half, mean + half
    return {"difference": mean, "ci_low": low, "ci_high": high, "discordant": pooled["discordant"],
            "verdict": verdict_of(low, high, pooled["discordant"]), "seeds": seeds,
            "per_seed": [float(d) for d in diffs]}


def student_t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with df degrees of freedom: the CDF from the density
    integrated on a fine grid (Simpson's rule), inverted by bisection; no SciPy in the lock for this."""
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float) -> float:
        grid = np.linspace(0.0, x, 20001)
        density = scale * (1 + grid * grid / df) ** (-(df + 1) / 2)
        step = x / 20000
        return 0.5 + step / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())

    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return (low + high) / 2


VERDICTS_HEADING = "Judge-free verdicts"


def verdicts_markdown(verdicts: dict[str, dict[str, dict[str, Any]]], legend: str) -> list[str]:
    """Verdicts as Markdown lines a reader scans: the legend, then one table row per comparison
    ("sft vs base" or "sft_vs_base" keys) with a column per measure, a decided verdict in bold."""
    if not verdicts:
        return []
    measures = list(dict.fromkeys(m for by_measure in verdicts.values() for m in by_measure))
    lines = [legend, "", "| comparison | " + " | ".join(measures) + " | seeds |",
             "|---|" + "---|" * len(measures) + "---|"]
    for pair, by_measure in verdicts.items():
        later = pair.replace("_vs_", " vs ").split(" vs ")[0]
        cells = [_verdict_cell(later, by_measure[m]) if m in by_measure else "—" for m in measures]
        seeds = max(v.get("seeds", 1) for v in by_measure.values())
        lines.append(f"| {pair.replace('_vs_', ' vs ')} | " + " | ".join(cells) + f" | {'one seed' if seeds == 1 else f'{seeds} seeds'} |")
    return lines


def _verdict_cell(later: str, verdict: dict[str, Any]) -> str:
    """"+59.0 [+51.9, +66.1], 122 differ: **higher**" (points; per-seed differences where several)."""
    per_seed = f"; per seed {', '.join(f'{100 * d:+.1f}' for d in verdict['per_seed'])}" if verdict.get("seeds", 1) > 1 else ""
    word = verdict["verdict"] if verdict["verdict"] in ("higher", "lower") else "no difference"
    said = f"**{later} is {word}**" if word != "no difference" else word
    return (f"{100 * verdict['difference']:+.1f} [{100 * verdict['ci_low']:+.1f}, {100 * verdict['ci_high']:+.1f}], "
            f"{verdict['discordant']} differ{per_seed}: {said}")


def interval_text(low: float, high: float) -> str:
    return f"[{low:.3f}, {high:.3f}]"


def win_rate(a: np.ndarray, b: np.ndarray) -> float:
    """How often a's answer outscores b's on the same prompt; a tie counts half."""
    return float(np.mean((a > b) + 0.5 * (a == b)))


def win_rates(rewards: dict[str, np.ndarray], chosen: np.ndarray) -> dict[str, float]:
    """Every later model against every earlier one (dpo vs sft, sft vs base, ...), and each vs the
    dataset's chosen answer."""
    rates = {}
    for earlier, later in itertools.combinations(rewards, 2):
        rates[f"{later}_vs_{earlier}"] = win_rate(rewards[later], rewards[earlier])
    for name, values in rewards.items():
        rates[f"{name}_vs_dataset_chosen"] = win_rate(values, chosen)
    return rates
