"""A study's seeds: each point again at shared.seed + k, and a table row per point over its seeds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from gptpipe.errors import UserError
from gptpipe.studies.runner import Point


def seeded_points(points: Sequence[Point], seeds: int, seed: int) -> list[tuple[Point, str, int]]:
    """(experiment point, study point label, seed index): seed 0 is params.yaml's shared.seed under
    the point's own label; seed k > 0 runs shared.seed + k as <label>-seed<k>. A seed changes the
    data's draw (synthetic), the init and the order: the spread is that of the whole recipe."""
    if seeds < 1:
        raise UserError(f"--seeds: {seeds}; must be at least 1")
    runs = []
    for point in points:
        runs.append((point, point.label, 0))
        runs += [(Point(f"{point.label}-seed{k}", {**point.overrides, "shared.seed": seed + k}), point.label, k)
                 for k in range(1, seeds)]
    return runs


# Columns whose spread over seeds the table shows beside their mean.
SPREAD_COLUMNS = ("test_loss", "exact_answer_accuracy", "sound_rate", "sft_reward")


def mean_over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """One row per point: numeric columns averaged over its seeds, <column>_sd (the sample standard
    deviation) beside the SPREAD_COLUMNS, other columns as the first seed has them."""
    rows = []
    for point, group in table.groupby("point", sort=False):
        row: dict[str, Any] = {"point": point, "seeds": len(group)}
        for column in group.columns.drop("point"):
            values = group[column]
            numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
            row[column] = values.mean() if numeric else values.iloc[0]
            if column in SPREAD_COLUMNS and numeric:
                row[f"{column}_sd"] = values.std(ddof=1) if len(group) > 1 else None
        rows.append(row)
    return pd.DataFrame(rows)


def seed_note(seeds: int) -> list[str]:
    if seeds == 1:
        return ["One seed per point (shared.seed): `gptpipe study <name> --seeds N` repeats each over N seeds "
                "and shows the mean and its spread (<column>_sd)."]
    return [f"Each row is the mean over {seeds} seeds (shared.seed, shared.seed + 1, ...; a seed redraws the "
            "synthetic data, the init and the order); <column>_sd is the sample standard deviation over seeds."]
