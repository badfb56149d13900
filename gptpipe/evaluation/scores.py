"""Scores of pairs by a reward model: every chosen and rejected response's reward, and how well the
scores separate them.

On synthetic data the ground truth says which chosen responses are flawed, so the scores can be checked:
the AUC is the probability that a sound chosen response outscores a flawed one (0.5 = no signal).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from gptpipe.data.subsets import mean_or_none


def score_pairs(pairs: pd.DataFrame, scorer, split: str) -> pd.DataFrame:
    """Every chosen response's reward, and every rejected one's where the record has one (single
    responses, SFT data, have none: NaN reward and margin)."""
    prompts = pairs["prompt"].tolist()
    chosen = scorer.score(prompts, pairs["chosen"].tolist(), desc=f"{split} chosen")
    rejected = np.full(len(pairs), np.nan)
    paired = pairs["rejected"].notna().to_numpy()
    if paired.any():
        rejected[paired] = scorer.score([p for p, keep in zip(prompts, paired) if keep],
                                        pairs["rejected"][paired].tolist(), desc=f"{split} rejected")
    frame = pd.DataFrame({
        "id": pairs["id"], "chosen_reward": chosen, "rejected_reward": rejected,
        "margin": chosen - rejected, "scorer": scorer.name,
    })
    if "flawed" in pairs:  # synthetic ground truth: is the chosen response itself flawed?
        frame["chosen_flawed"] = pairs["flawed"].to_numpy()
    return frame


def summarise_scores(frame: pd.DataFrame) -> dict[str, Any]:
    """Accuracy over the pairs with a margin; None where nothing was scored (no judge, no rejected)."""
    margin = frame["margin"].dropna()
    summary = {
        "pairs": len(frame),
        # A tie counts half, as in the reward stage's accuracy, DPO's and the AUC: it orders neither way.
        "pairwise_accuracy": float((margin > 0).mean() + 0.5 * (margin == 0).mean()) if len(margin) else None,
        "mean_chosen_reward": mean_or_none(frame["chosen_reward"]),
        "mean_rejected_reward": mean_or_none(frame["rejected_reward"]),
    }
    if frame["chosen_reward"].isna().all():
        return summary
    if "chosen_flawed" in frame:
        flawed = frame["chosen_flawed"].to_numpy(bool)
        summary["sound_vs_flawed_chosen_auc"] = auc(frame["chosen_reward"][~flawed], frame["chosen_reward"][flawed])
    return summary


def auc(positives, negatives) -> float | None:
    """P(a positive outscores a negative), ties counting half (the Mann-Whitney U statistic)."""
    pos, neg = np.asarray(positives, float), np.asarray(negatives, float)
    if not len(pos) or not len(neg):
        return None
    ranks = pd.Series(np.concatenate([pos, neg])).rank().to_numpy()  # average ranks for ties
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))
