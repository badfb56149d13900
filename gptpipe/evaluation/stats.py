"""Intervals and win rates: how sure a mean is, and how often one model's answer beats another's."""

from __future__ import annotations

import itertools
import math
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
    if discordant < MIN_DISCORDANT or low <= 0 <= high:
        verdict = "no difference"
    else:
        verdict = "higher" if low > 0 else "lower"
    return {"difference": float(d.mean()), "ci_low": low, "ci_high": high, "discordant": discordant, "verdict": verdict}


# Prompts answered differently below which a paired difference of rates is "no difference".
MIN_DISCORDANT = 10


VERDICTS_HEADING = "Judge-free verdicts"


def verdict_sentence(later: str, earlier: str, measure: str, verdict: dict[str, Any]) -> str:
    """One paired_difference as Markdown: "sft vs base, exact accuracy: +63.5 points [+56.6, +70.4],
    127 prompts differ: **sft is higher**"."""
    said = {"higher": f"{later} is higher", "lower": f"{later} is lower"}.get(verdict["verdict"], "no difference")
    return (f"{later} vs {earlier}, {measure}: {100 * verdict['difference']:+.1f} points "
            f"[{100 * verdict['ci_low']:+.1f}, {100 * verdict['ci_high']:+.1f}], "
            f"{verdict['discordant']} prompts differ: **{said}**")


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
