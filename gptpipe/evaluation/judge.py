"""Judged answers: reading them, their summary per model, and the models side by side.

judge (one DVC stage per model): every answer in data/generated/<model>.jsonl scored by the reward
scorer (the same judge that filtered the training data) → data/judged/<model>.parquet, with the
exact-answer check where the data has ground truth (synthetic).

evaluate: all judged models side by side on the same prompts: mean reward with a confidence interval,
win rates between models and against the dataset's own chosen response (its reward comes from
data/scored/test.parquet: the same judge), the chosen and rejected means as reference lines, a PNG of
the reward distributions and a readable markdown report with sample answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from gptpipe.data.answer_labels import LABELS
from gptpipe.errors import UserError, reading
from gptpipe.evaluation.stats import (
    MIN_DISCORDANT, VERDICTS_HEADING, interval_text, mean_interval, paired_difference, proportion_interval,
    verdicts_markdown,
)
from gptpipe.tables import markdown_table

MODEL_ORDER = ("base", "sft", "dpo")
SAMPLES_IN_REPORT = 5


def read_answers(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: no generated answers; run the generate stage first (dvc repro)")
    with reading(path, "answers file (JSON Lines, as the generate stage writes)"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=["id", "prompt", "response", "tokens", "stopped"])


def ground_truth(raw_test: Path) -> dict[str, dict[str, str]] | None:
    """id → {"answer", "family"}: the expected answer and its task family, where the data carries
    them (the synthetic set)."""
    with reading(raw_test, "Parquet table"):
        table = pq.read_table(raw_test)
    if "answer" not in table.column_names:
        return None
    ids, answers = table.column("id").to_pylist(), table.column("answer").to_pylist()
    families = table.column("family").to_pylist() if "family" in table.column_names else [None] * len(ids)
    return {i: {"answer": a, "family": f} for i, a, f in zip(ids, answers, families, strict=True)}


def reward_summary(frame: pd.DataFrame, confidence: float) -> dict[str, Any]:
    low, high = mean_interval(frame["reward"].to_numpy(), confidence)
    summary = {
        "answers": len(frame), "mean_reward": float(frame["reward"].mean()),
        "ci_low": low, "ci_high": high, "confidence": confidence,
        "mean_tokens": float(frame["tokens"].mean()) if len(frame) else 0.0,
    }
    if "correct" in frame:
        summary["exact_answer_accuracy"] = float(frame["correct"].mean())
        # Scalars, not a list: `dvc exp show` and `dvc metrics diff` drop list-valued metrics.
        low, high = proportion_interval(int(frame["correct"].sum()), len(frame), confidence)
        summary["exact_answer_ci_low"], summary["exact_answer_ci_high"] = low, high
    if "family" in frame and "correct" in frame:
        summary["exact_by_family"] = {
            family: {"correct": int(group["correct"].sum()), "answers": len(group),
                     "accuracy": float(group["correct"].mean()),
                     "ci": list(proportion_interval(int(group["correct"].sum()), len(group), confidence))}
            for family, group in frame.groupby("family", sort=True)
        }
    if "label" in frame:  # the judge-free labels' rates (gptpipe.data.answer_labels)
        summary["labels"] = {label: float((frame["label"] == label).mean()) for label in LABELS}
    return summary




def load_judged(judged: Path, names) -> dict[str, pd.DataFrame]:
    """The judged answers of the models params name (a file left by a model no longer named is not
    read), in pipeline order: base, sft, dpo."""
    frames = {}
    for name in sorted(names, key=lambda n: MODEL_ORDER.index(n)):
        path = judged / f"{name}.parquet"
        if not path.is_file():
            raise UserError(f"{path}: missing; run the judge stage for {name} first (dvc repro judge@{name})")
        with reading(path, "Parquet table"):
            frames[name] = pd.read_parquet(path)
    return frames


def judge_free_verdicts(frames: dict[str, pd.DataFrame], confidence: float) -> dict[str, dict[str, Any]]:
    """Each later model against each earlier one (sft vs base, dpo vs sft, dpo vs base) on exact
    accuracy and the sound-answer rate, paired by prompt: the verdicts the ground truth supports."""
    if not all("label" in f for f in frames.values()):
        return {}
    outcomes = {name: {"exact accuracy": f["correct"].to_numpy(), "sound-answer rate": (f["label"] == "sound").to_numpy()}
                for name, f in frames.items()}
    names = list(frames)
    return {
        f"{later}_vs_{earlier}": {measure: paired_difference(outcomes[later][measure], values, confidence)
                                  for measure, values in outcomes[earlier].items()}
        for i, earlier in enumerate(names) for later in names[i + 1 :]
    }


def _verdict_lines(verdicts: dict[str, dict[str, Any]], confidence: float) -> list[str]:
    legend = (f"{VERDICTS_HEADING}: each later model against the earlier one, answers paired by prompt; the "
              f"difference in percentage points, its {round(100 * confidence)}% interval, how many prompts were "
              f"answered differently, and the verdict (fewer than {MIN_DISCORDANT} differing prompts, or an "
              f"interval holding 0, is no difference):")
    lines = verdicts_markdown(verdicts, legend)
    return lines + [""] if lines else []


def _win_rate_lines(rates: dict[str, float]) -> list[str]:
    table = pd.DataFrame([{"first": key.split("_vs_")[0], "second": key.split("_vs_")[1].replace("_", " "), "win rate": value}
                          for key, value in rates.items()])
    return ["Win rates: how often the first model's answer outscores the second's on the same prompt "
            "(by the judge; ties count half):", "", markdown_table(table, floatfmt=".3f"), ""]


def family_table(metrics: dict[str, Any]) -> pd.DataFrame | None:
    """Exact accuracy per task family (rows) and model (columns): correct/answers and the interval."""
    by_model = {name: m["exact_by_family"] for name, m in metrics["models"].items() if "exact_by_family" in m}
    if not by_model:
        return None
    families = sorted({family for table in by_model.values() for family in table})
    rows = []
    for family in families:
        row = {"family": family}
        for name, table in by_model.items():
            f = table.get(family)
            row[name] = f"{f['correct']}/{f['answers']} ({100 * f['accuracy']:.0f}%, [{100 * f['ci'][0]:.0f}, {100 * f['ci'][1]:.0f}])" if f else None
        rows.append(row)
    return pd.DataFrame(rows)


def _family_lines(metrics: dict[str, Any]) -> list[str]:
    table = family_table(metrics)
    if table is None:
        return []
    level = round(100 * metrics["confidence"])
    return [f"Exact answer accuracy per task family: correct/answers (%, {level}% interval):", "",
            markdown_table(table), ""]


def summary_table(metrics: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for name, m in metrics["models"].items():
        rows.append({
            "model": name, "mean_reward": m["mean_reward"],
            f"ci{round(100 * metrics['confidence'])}": interval_text(m["ci_low"], m["ci_high"]),
            "win_vs_dataset_chosen": metrics["win_rates"][f"{name}_vs_dataset_chosen"],
            "exact_answer_accuracy": m.get("exact_answer_accuracy"),
            **({"exact_ci": interval_text(m["exact_answer_ci_low"], m["exact_answer_ci_high"])} if "exact_answer_ci_low" in m else {}),
            **{label: rate for label, rate in m.get("labels", {}).items()},
            "mean_tokens": m["mean_tokens"],
        })
    for name, m in metrics["reference"].items():
        rows.append({"model": name, "mean_reward": m["mean_reward"],
                     f"ci{round(100 * metrics['confidence'])}": interval_text(m["ci_low"], m["ci_high"])})
    return pd.DataFrame(rows)


def report_markdown(table: pd.DataFrame, metrics: dict[str, Any], answers: dict[str, pd.DataFrame],
                    frames: dict[str, pd.DataFrame], raw_test: Path, ids: pd.Series) -> str:
    lines = [
        f"# Answers judged by {metrics['scorer']}", "",
        f"{metrics['prompts']} test prompts, the same for every model; mean reward with its "
        f"{round(100 * metrics['confidence'])}% interval (normal approximation).", "",
        markdown_table(table, floatfmt=".3f"), "",
        *(["Exact answer accuracy against the ground truth, with its interval, and the share of answers of "
           "each kind (sound, rambling, unhelpful, wrong, rude) by a judge-free label from what the data "
           "generator knows (gptpipe/data/answer_labels.py): these measure the assistant, the reward "
           "measures the judge.", ""] if "sound" in table else []),
        *_family_lines(metrics),
        *_verdict_lines(metrics.get("judge_free_verdicts", {}), metrics["confidence"]),
        *_win_rate_lines(metrics["win_rates"]),
        "## Sample answers", "",
    ]
    with reading(raw_test, "Parquet table"):
        raw = pq.read_table(raw_test).to_pandas().set_index("id")
    for key in ids.iloc[:SAMPLES_IN_REPORT]:
        prompt = answers[next(iter(answers))].loc[key, "prompt"]
        lines += [f"**Prompt** (`{key}`):", "", _quote(prompt.strip()), ""]
        for name in answers:
            reward = frames[name].set_index("id").loc[key, "reward"]
            lines += [f"- **{name}** (reward {reward:.2f}): {_one_line(answers[name].loc[key, 'response'])}"]
        lines += [f"- **dataset chosen**: {_one_line(raw.loc[key, 'chosen'])}", ""]
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return (text[:300] + " …") if len(text) > 300 else (text or "(empty)")


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines())
