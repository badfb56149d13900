"""The columns every study's table shares: where the SFT run's metrics are, and its judged answers."""

from __future__ import annotations

from typing import Any

from gptpipe.evaluation.stats import interval_text, proportion_interval
from gptpipe.studies.runner import Result

SFT_METRICS = "metrics/sft.json"
SFT_SERIES = "plots/sft/loss.tsv"
JUDGE_SFT = "metrics/judge/sft.json"


def judged_columns(r: Result) -> dict[str, Any]:
    """The SFT model's answers: exact accuracy (with its interval) and the sound-answer rate by the
    judge-free labels, beside the judge's mean reward. Blank where the data has no ground truth."""
    judge = r.metrics.get(JUDGE_SFT, {})
    accuracy, answers = judge.get("exact_answer_accuracy"), judge.get("answers")
    interval = None
    if accuracy is not None and answers:  # from the rate, so records written before the interval was a metric have it
        interval = interval_text(*proportion_interval(round(accuracy * answers), answers, judge["confidence"]))
    return {
        "exact_answer_accuracy": accuracy,
        "exact_ci": interval,
        "sound_rate": (judge.get("labels") or {}).get("sound"),
        "sft_reward": judge.get("mean_reward"),
    }
