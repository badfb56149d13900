"""The sentences each part leads with: what a reader looks for first, in words and numbers.

Each sentence is Markup built with Markup.format, which escapes every value it inserts, so a study
label or a scorer's name cannot break the page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup

from gptpipe.report.format import fmt, fmt_percent, humanize, is_number
from gptpipe.report.metrics import DpoMetrics, FilterMetrics, RewardMetrics, ScalingMetrics, ScoreMetrics

Row = Mapping[str, Any]  # a study table's row: its columns differ from study to study


# -- stages ---------------------------------------------------------------------------------------

def training_finding(stage: str, series: Sequence[Row]) -> Markup | None:
    """`sft: test loss 2.293 → 1.624 over 124,742 tokens (150 steps)`, from the stage's loss.tsv."""
    if len(series) < 2:
        return None
    first, last = series[0], series[-1]
    # Only SFT on data with ground truth measures the loss on the sound test answers.
    sound = (Markup("; on the sound answers only {} → {}").format(fmt(first["test_sound_loss"]),
                                                                   fmt(last["test_sound_loss"]))
             if "test_sound_loss" in first else "")
    return Markup("<strong>{}</strong>: test loss {} → {}{} over {} tokens ({} steps).").format(
        stage, fmt(first["test_loss"]), fmt(last["test_loss"]), sound, fmt(int(last["tokens"])),
        fmt(int(last["step"])))


def _pairwise_accuracy(subject: str, accuracy: float, key: str) -> Markup:
    return Markup("{}: <strong>{}</strong> of test pairs score the chosen response above the rejected one "
                  "(<code>{}</code>; 50% is chance).").format(subject, fmt_percent(accuracy), key)


def reward_findings(m: RewardMetrics) -> list[Markup]:
    if m.test_accuracy_all_pairs is None:  # the hub classifier is not trained here
        return []
    return [_pairwise_accuracy("Reward model pairwise test accuracy", m.test_accuracy_all_pairs,
                               "test_accuracy_all_pairs")]


def dpo_findings(m: DpoMetrics) -> list[Markup]:
    if m.test_accuracy is None:
        return []
    # DPO's policy is an implicit reward model (Rafailov et al. 2023, §5): the same measure as the reward stage's.
    return [_pairwise_accuracy("DPO implicit-reward test accuracy", m.test_accuracy, "test_accuracy")]


def score_findings(m: ScoreMetrics) -> list[Markup]:
    said = [
        Markup("{}: chosen scored above rejected in {} of {} pairs (mean reward chosen {}, rejected {}).").format(
            name, fmt_percent(split.pairwise_accuracy), fmt(split.pairs), fmt(split.mean_chosen_reward),
            fmt(split.mean_rejected_reward))
        for name, split in (("train", m.train), ("test", m.test)) if split.pairwise_accuracy is not None
    ]
    if said and m.scorer:
        said.insert(0, Markup("Scored by {}.").format(m.scorer))
    return said


def filter_findings(m: FilterMetrics) -> list[Markup]:
    if m.kept is None or m.total is None:
        return []
    threshold = Markup(" (threshold {}).").format(fmt(m.threshold)) if m.threshold is not None else "."
    said = [Markup("Kept <strong>{}</strong> of {} train pairs by {}{}").format(
        fmt(m.kept), fmt(m.total), str(m.by), threshold)]
    if m.flawed_fraction_kept is not None:
        said.append(Markup("Flawed chosen responses (synthetic ground truth): {} of those kept vs {} of those "
                           "dropped.").format(fmt_percent(m.flawed_fraction_kept),
                                              fmt_percent(m.flawed_fraction_dropped)))
    return said


def scaling_findings(m: ScalingMetrics) -> list[Markup]:
    if m.n_opt_exponent is None:
        said = [Markup("Exponents not fitted: {}.").format(m.exponent_note or "no exponent in the metrics")]
    else:
        fit = f"r² {fmt(m.n_opt_r2)}" if m.n_opt_r2 is not None else "a line through 2 points, so no r²"
        said = [Markup("Fitted N<sub>opt</sub> ∝ C<sup>{}</sup> ({}) and D<sub>opt</sub> ∝ C<sup>{}</sup> over "
                       "{} budgets, {} runs (Chinchilla found about 0.5 each).").format(
            fmt(m.n_opt_exponent), fit, fmt(m.d_opt_exponent), len(m.fitted_budgets or []), fmt(m.n_runs))]
    if m.extrapolated_budgets:
        said.append(Markup("Extrapolated (vertex outside the sizes run, so not in the exponent fit) at {} FLOPs.")
                    .format(", ".join(fmt(b) for b in m.extrapolated_budgets)))
    return said


# -- study tables ---------------------------------------------------------------------------------

def cell(row: Row, column: str) -> Any:
    """A row's value in a column it may lack (older records have fewer columns)."""
    return row.get(column)


def number(row: Row, column: str) -> float | None:
    value = cell(row, column)
    return value if is_number(value) else None


def row_label(row: Row) -> str:
    """A study row's name, its first column: `adamw`, `full`; a bare number gets the column's name: `rank 8`."""
    key, value = next(iter(row.items()))
    return f"{humanize(key)} {value}" if is_number(value) or str(value).isdigit() else str(value)


def extremes(rows: Sequence[Row], column: str, lowest: bool = True) -> tuple[str, float] | None:
    """The labels (`adam, adamw`) of the rows with the lowest (or highest) value, and that value; ties as
    the reader sees them."""
    values = [v for r in rows if (v := number(r, column)) is not None]
    if not values:
        return None
    best = min(values) if lowest else max(values)
    labels = [row_label(r) for r in rows if (v := number(r, column)) is not None and fmt(v) == fmt(best)]
    return ", ".join(labels), best


def study_findings(rows: Sequence[Row]) -> list[Markup]:
    """What a reader looks for first in a study table, in words, beside its verdicts (a table of their
    own, gptpipe.report.verdicts): what the losses and the judge show."""
    return [*_test_loss(rows), *_sound_loss(rows), *_judged(rows), *_tokens_to_target(rows), *_against_full(rows)]


def _test_loss(rows: Sequence[Row]) -> list[Markup]:
    low, high = extremes(rows, "test_loss"), extremes(rows, "test_loss", lowest=False)
    if not (low and high):
        return []
    return [Markup("Lowest final test loss: <strong>{}</strong> ({}); highest: {} ({}).").format(
        low[0], fmt(low[1]), high[0], fmt(high[1]))]


def _sound_loss(rows: Sequence[Row]) -> list[Markup]:
    """The loss on the sound test answers: the judge-free measure of learning the right answers."""
    sound = extremes(rows, "test_sound_loss")
    if not sound:
        return []
    said = Markup("Lowest test loss on the sound answers only: <strong>{}</strong> ({}).").format(
        sound[0], fmt(sound[1]))
    return [said, *_against_controls(rows, "test_sound_loss", higher_is_better=False,
                                     measure=", by the test loss on sound answers (no judge involved)")]


def _judged(rows: Sequence[Row]) -> list[Markup]:
    """Studies that judge their SFT answers: the best judged row, and each control against its top subset."""
    column = next((c for c in ("sft_reward", "sft_reward_one_judge") if rows and c in rows[0]), None)
    if column is None:
        return []
    said = []
    best = extremes(rows, column, lowest=False)
    if best:
        said.append(Markup("Highest judged reward of the SFT answers: <strong>{}</strong> ({}).").format(
            best[0], fmt(best[1])))
    return said + _against_controls(rows, column, higher_is_better=True, measure="")


def _against_controls(rows: Sequence[Row], column: str, *, higher_is_better: bool, measure: str) -> list[Markup]:
    """Each random control against the reward-filtered subset of the same size: quality apart from quantity."""
    said = []
    for control in rows:
        if cell(control, "by") != "random" or number(control, column) is None:
            continue
        top = next((r for r in rows if cell(r, "by") != "random" and cell(r, "pairs") == cell(control, "pairs")
                    and number(r, column) is not None), None)
        if top is None:
            continue
        wins = top[column] > control[column] if higher_is_better else top[column] < control[column]
        # A comparison of two means without an interval: it describes, the verdicts above decide.
        said.append(Markup("At {} pairs{}, the reward-filtered {} ({}) is {} the random control {} ({}).").format(
            fmt(control["pairs"]), measure, row_label(top), fmt(top[column]),
            "ahead of" if wins else "not ahead of", row_label(control), fmt(control[column])))
    return said


def _tokens_to_target(rows: Sequence[Row]) -> list[Markup]:
    reach = extremes(rows, "tokens_to_target")
    if not reach:
        return []
    return [Markup("Fewest tokens to the target loss: {} ({}).").format(reach[0], fmt(reach[1]))]


def _against_full(rows: Sequence[Row]) -> list[Markup]:
    """A study with a `full` row (LoRA ranks): how close the best other row gets, and at what memory."""
    full = next((r for r in rows if row_label(r) == "full"), None)
    others = [r for r in rows if row_label(r) != "full" and number(r, "test_loss") is not None]
    if full is None or not others or number(full, "test_loss") is None:
        return _least_state(rows)
    best = min(others, key=lambda r: r["test_loss"])
    gap = best["test_loss"] - full["test_loss"]
    state = "state_MiB" in best and "state_MiB" in full
    return [Markup("Full fine-tuning reaches a test loss of {}{}; the best of the rest, {}, reaches {} ({}{}){}")
            .format(fmt(full["test_loss"]),
                    Markup(" with {} MiB of optimizer state").format(fmt(full["state_MiB"])) if state else "",
                    row_label(best), fmt(best["test_loss"]), "+" if gap >= 0 else "", fmt(gap),
                    Markup(" with {} MiB.").format(fmt(best["state_MiB"])) if state else ".")]


def _least_state(rows: Sequence[Row]) -> list[Markup]:
    least = extremes(rows, "state_MiB") if rows and "state_MiB" in rows[0] else None
    if not least:
        return []
    return [Markup("Least optimizer state: {} ({} MiB).").format(least[0], fmt(least[1]))]
