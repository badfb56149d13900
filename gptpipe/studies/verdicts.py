"""A study's verdicts, decided on the judge-free measures: exact-answer accuracy and the sound-answer
rate of each point's SFT answers, paired by prompt with the point it is compared to.

Each point's judged answers (data/judged/sft.parquet) are read from its own experiment; with several
seeds, the (seed, prompt) pairs of every seed are pooled, each seed's two points paired on the same
prompts. A difference whose interval holds 0, or that rests on fewer than MIN_DISCORDANT differing
answers, is "no difference" (gptpipe.evaluation.stats.paired_difference).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from gptpipe.evaluation.stats import MIN_DISCORDANT, paired_difference

JUDGED_SFT = "data/judged/sft.parquet"
MEASURES = ("exact accuracy", "sound-answer rate")


def read_judged(experiment: str) -> pd.DataFrame | None:
    """One experiment's judged SFT answers, or None where they carry no ground truth (real HH)."""
    import dvc.api

    with dvc.api.open(JUDGED_SFT, rev=experiment, mode="rb") as handle:
        frame = pd.read_parquet(io.BytesIO(handle.read()))
    return frame if {"correct", "label"} <= set(frame.columns) else None


def outcomes(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """Per-prompt 0/1 outcomes by measure, indexed by prompt id."""
    indexed = frame.set_index("id")
    return {"exact accuracy": indexed["correct"].astype(bool), "sound-answer rate": indexed["label"] == "sound"}


def paired_verdict(later: Sequence[pd.DataFrame], earlier: Sequence[pd.DataFrame], confidence: float) -> dict[str, Any]:
    """later[k] and earlier[k] are the two points' answers under seed k; each measure's verdict."""
    verdicts = {}
    for measure in MEASURES:
        a, b = [], []
        for later_frame, earlier_frame in zip(later, earlier, strict=True):
            x, y = outcomes(later_frame)[measure], outcomes(earlier_frame)[measure]
            shared = x.index.intersection(y.index)
            a.append(x.loc[shared].to_numpy())
            b.append(y.loc[shared].to_numpy())
        verdicts[measure] = paired_difference(np.concatenate(a), np.concatenate(b), confidence)
    return verdicts


def verdict_lines(verdicts: dict[str, dict[str, Any]], confidence: float) -> list[str]:
    """Markdown notes: one line per compared pair and measure."""
    if not verdicts:
        return []
    lines = [f"Judge-free verdicts (SFT answers paired by prompt, pooled over seeds; {round(100 * confidence)}% "
             f"interval of the difference; an interval holding 0 or fewer than {MIN_DISCORDANT} differing "
             "answers is no difference):"]
    for pair, measures in verdicts.items():
        later, earlier = pair.split(" vs ")
        for measure, v in measures.items():
            said = {"higher": f"{later} is higher", "lower": f"{later} is lower"}.get(v["verdict"], "no difference")
            lines.append(f"{later} vs {earlier}, {measure}: {100 * v['difference']:+.1f} points "
                         f"[{100 * v['ci_low']:+.1f}, {100 * v['ci_high']:+.1f}], {v['discordant']} answers "
                         f"differ: **{said}**")
    return lines
