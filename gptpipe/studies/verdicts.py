"""A study's verdicts, decided on the judge-free measures: exact-answer accuracy and the sound-answer
rate of each point's SFT answers, paired by prompt with the point it is compared to.

Each point's judged answers (data/judged/<model>.parquet, the SFT model's by default) are read from
its own experiment; each seed's two points are paired on that seed's prompts, and with several seeds
the interval covers the seed-to-seed spread (gptpipe.evaluation.stats.seeded_difference). A
difference whose interval holds 0, or that rests on fewer than MIN_DISCORDANT differing answers, is
"no difference".
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import pandas as pd

from gptpipe.evaluation.stats import MIN_DISCORDANT, VERDICTS_HEADING, seeded_difference, verdicts_markdown

MEASURES = ("exact accuracy", "sound-answer rate")


def read_judged(experiment: str, model: str = "sft") -> pd.DataFrame | None:
    """One experiment's judged answers of one model, or None where they carry no ground truth (real HH)."""
    import dvc.api

    with dvc.api.open(f"data/judged/{model}.parquet", rev=experiment, mode="rb") as handle:
        frame = pd.read_parquet(io.BytesIO(handle.read()))
    return frame if {"correct", "label"} <= set(frame.columns) else None


def outcomes(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """Per-prompt 0/1 outcomes by measure, indexed by prompt id."""
    indexed = frame.set_index("id")
    return {"exact accuracy": indexed["correct"].astype(bool), "sound-answer rate": indexed["label"] == "sound"}


def paired_verdict(later: Sequence[pd.DataFrame], earlier: Sequence[pd.DataFrame], confidence: float) -> dict[str, Any]:
    """later[k] and earlier[k] are the two points' answers under seed k; each measure's verdict."""
    pairs = [(outcomes(x), outcomes(y)) for x, y in zip(later, earlier, strict=True)]
    verdicts = {}
    for measure in MEASURES:
        per_seed = []
        for x, y in ((xs[measure], ys[measure]) for xs, ys in pairs):
            shared = x.index.intersection(y.index)
            per_seed.append((x.loc[shared].to_numpy(), y.loc[shared].to_numpy()))
        verdicts[measure] = seeded_difference(per_seed, confidence)
    return verdicts


def verdict_lines(verdicts: dict[str, dict[str, Any]], confidence: float) -> list[str]:
    """Markdown: the legend, then a table with one row per compared pair and a column per measure."""
    return verdicts_markdown(verdicts, (
        f"{VERDICTS_HEADING}: answers paired by prompt within each seed; the difference in percentage points, "
        f"its {round(100 * confidence)}% interval (over seeds where there are several: Student's t on the per-seed "
        f"differences), how many answers differ, and the verdict (an interval holding 0 or fewer than "
        f"{MIN_DISCORDANT} differing answers is no difference):"))
