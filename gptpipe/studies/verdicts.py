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

from gptpipe.evaluation.stats import MIN_DISCORDANT, VERDICTS_HEADING, paired_difference, verdict_sentence

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
    pairs = [(outcomes(x), outcomes(y)) for x, y in zip(later, earlier, strict=True)]
    verdicts = {}
    for measure in MEASURES:
        a, b = [], []
        for x, y in ((xs[measure], ys[measure]) for xs, ys in pairs):
            shared = x.index.intersection(y.index)
            a.append(x.loc[shared].to_numpy())
            b.append(y.loc[shared].to_numpy())
        verdicts[measure] = paired_difference(np.concatenate(a), np.concatenate(b), confidence)
    return verdicts


def verdict_lines(verdicts: dict[str, dict[str, Any]], confidence: float) -> list[str]:
    """Markdown notes: one line per compared pair and measure."""
    if not verdicts:
        return []
    lines = [f"{VERDICTS_HEADING} (SFT answers paired by prompt, pooled over seeds; {round(100 * confidence)}% "
             f"interval of the difference; an interval holding 0 or fewer than {MIN_DISCORDANT} differing "
             "answers is no difference):"]
    for pair, measures in verdicts.items():
        later, earlier = pair.split(" vs ")
        lines += [verdict_sentence(later, earlier, measure, v) for measure, v in measures.items()]
    return lines
