"""Which pairs a stage trains or measures on: the filter's top-N by reward (or a random N, the
control), and the test pairs whose chosen response is sound by the ground truth."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gptpipe.errors import reading


def select(frame: pd.DataFrame, size: int, by: str, seed: int) -> np.ndarray:
    """Row positions of the pairs kept: the `size` highest by `by` (ties broken by position), or random."""
    if by == "random":
        return np.array(sorted(random.Random(f"filter-{seed}").sample(range(len(frame)), size)), dtype=int)
    order = np.argsort(-frame[by].to_numpy(), kind="stable")
    return np.sort(order[:size])


def mean_or_none(values: pd.Series) -> float | None:
    """The mean of the scored values; None (JSON null, not NaN) where none was scored."""
    values = values.dropna()
    return float(values.mean()) if len(values) else None


def min_or_none(values: pd.Series) -> float | None:
    """The smallest scored value; None (JSON null) where none was scored."""
    values = values.dropna()
    return float(values.min()) if len(values) else None


def filter_metrics(frame: pd.DataFrame, kept: np.ndarray, by: str) -> dict[str, Any]:
    mask = np.zeros(len(frame), bool)
    mask[kept] = True
    metrics: dict[str, Any] = {
        "by": by, "kept": int(mask.sum()), "total": len(frame),
        "threshold": None if by == "random" else min_or_none(frame[by][mask]),  # the lowest kept
    }
    for column in ("chosen_reward", "margin"):  # None where unscored (no judge) or no rejected (SFT data)
        metrics[f"mean_{column}_kept"] = mean_or_none(frame[column][mask])
        metrics[f"mean_{column}_dropped"] = mean_or_none(frame[column][~mask])
    if "chosen_flawed" in frame:  # how much of the filtered set is flawed, by the ground truth
        flawed = frame["chosen_flawed"].to_numpy(bool)
        metrics["flawed_fraction_kept"] = float(flawed[mask].mean())
        metrics["flawed_fraction_dropped"] = float(flawed[~mask].mean()) if (~mask).any() else None
    return metrics


def sound_test_pairs(test: pa.Table, raw_test: Path) -> pa.Table | None:
    """The tokenized test pairs whose chosen response is sound by the data's ground truth.

    The test loss on every chosen response rewards imitating the flawed ones too (30% of the
    synthetic data); this subset asks how well a model predicts the answers it should give.
    None where the data has no ground truth (HH), or no sound pair to measure on.
    """
    with reading(raw_test, "Parquet table"):
        if "flawed" not in pq.read_schema(raw_test).names:
            return None
        truth = pq.read_table(raw_test, columns=["id", "flawed"])
    sound_ids = {i for i, flawed in zip(truth["id"].to_pylist(), truth["flawed"].to_pylist(), strict=True)
                 if not flawed}
    sound = test.filter(pa.array([i in sound_ids for i in test["id"].to_pylist()], pa.bool_()))
    return sound if sound.num_rows else None
