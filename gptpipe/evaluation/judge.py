"""Judging generated answers with the reward model, and comparing the models.

judge (one DVC stage per model): every answer in data/generated/<model>.jsonl scored by the reward
scorer (the same judge that filtered the training data) → data/judged/<model>.parquet, with the
exact-answer check where the data has ground truth (synthetic).

evaluate: all judged models side by side on the same prompts: mean reward with a confidence interval,
win rates between models and against the dataset's own chosen response (its reward comes from
data/scored/test.parquet: the same judge), the chosen and rejected means as reference lines, a PNG of
the reward distributions and a readable markdown report with sample answers.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from gptpipe import figures as plots
from gptpipe.config import Params
from gptpipe.errors import UserError
from gptpipe.files import atomic_path, write_json
from gptpipe.models.reward import load_scorer
from gptpipe.data.synthetic import response_is_correct
from gptpipe.tables import markdown_table
from gptpipe.train.loop import make_runtime

MODEL_ORDER = ("base", "sft", "dpo")
SAMPLES_IN_REPORT = 5


def run_judge(params: Params, name: str, generated: Path, reward: Path, raw_test: Path, out: Path, metrics_path: Path) -> dict:
    """data/judged/<name>.parquet: reward (and, with ground truth, correctness) of every answer."""
    answers = read_answers(generated)
    runtime = make_runtime(params.shared)
    scorer = load_scorer(reward, params.reward.score_batch_size, runtime.device, params.reward.hf_max_length)
    frame = pd.DataFrame({
        "id": answers["id"], "reward": scorer.score(answers["prompt"].tolist(), answers["response"].tolist(), desc=name),
        "tokens": answers["tokens"], "stopped": answers["stopped"],
    })
    truth = ground_truth(raw_test)
    if truth is not None:
        frame["correct"] = [response_is_correct(r, truth[i]) for i, r in zip(answers["id"], answers["response"], strict=True)]
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)
    metrics = {"model": name, "scorer": scorer.name, **reward_summary(frame, params.evaluate.confidence)}
    write_json(metrics_path, metrics)
    return metrics


def read_answers(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: no generated answers; run the generate stage first (dvc repro)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=["id", "prompt", "response", "tokens", "stopped"])


def ground_truth(raw_test: Path) -> dict[str, str] | None:
    """id → the expected answer, where the data carries one (the synthetic set)."""
    table = pq.read_table(raw_test)
    if "answer" not in table.column_names:
        return None
    return dict(zip(table.column("id").to_pylist(), table.column("answer").to_pylist(), strict=True))


def reward_summary(frame: pd.DataFrame, confidence: float) -> dict[str, Any]:
    low, high = mean_interval(frame["reward"].to_numpy(), confidence)
    summary = {
        "answers": len(frame), "mean_reward": float(frame["reward"].mean()),
        "ci_low": low, "ci_high": high, "confidence": confidence,
        "mean_tokens": float(frame["tokens"].mean()) if len(frame) else 0.0,
    }
    if "correct" in frame:
        summary["exact_answer_accuracy"] = float(frame["correct"].mean())
    return summary


def mean_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The normal-approximation interval of the mean (n is 200 by default: the CLT is fine there)."""
    n = len(values)
    if n < 2:
        return (float("nan"), float("nan"))
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * values.std(ddof=1) / math.sqrt(n)
    return float(values.mean() - half), float(values.mean() + half)


def win_rate(a: np.ndarray, b: np.ndarray) -> float:
    """How often a's answer outscores b's on the same prompt; a tie counts half."""
    return float(np.mean((a > b) + 0.5 * (a == b)))


# -- evaluate: the models side by side ----------------------------------------------------------


def run_evaluate(params: Params, judged: Path, generated: Path, scored_test: Path, raw_test: Path,
                 metrics_path: Path, plots_dir: Path) -> dict:
    frames = load_judged(judged, params.generate.models)
    ids = frames[next(iter(frames))]["id"]
    for name, frame in frames.items():
        if frame["id"].tolist() != ids.tolist():
            raise UserError(f"{judged}/{name}.parquet: answers other prompts than the other models; rerun generate")
    dataset = pd.read_parquet(scored_test).set_index("id").loc[ids]
    confidence = params.evaluate.confidence
    rewards = {name: frame["reward"].to_numpy() for name, frame in frames.items()}
    references = {"dataset chosen": dataset["chosen_reward"].to_numpy(), "dataset rejected": dataset["rejected_reward"].to_numpy()}
    metrics: dict[str, Any] = {
        "prompts": len(ids), "scorer": str(dataset["scorer"].iloc[0]), "confidence": confidence,
        "models": {name: reward_summary(frame, confidence) for name, frame in frames.items()},
        "reference": {name: {"mean_reward": float(v.mean()), **dict(zip(("ci_low", "ci_high"), mean_interval(v, confidence)))}
                      for name, v in references.items()},
        "win_rates": win_rates(rewards, references["dataset chosen"]),
    }
    table = summary_table(metrics)
    plots.reward_distributions({**rewards, **references}, plots_dir / "rewards.png",
                               f"rewards of answers to {len(ids)} test prompts ({metrics['scorer']})")
    answers = {name: read_answers(generated / f"{name}.jsonl").set_index("id").loc[ids] for name in frames}
    with atomic_path(plots_dir / "report.md") as tmp:
        tmp.write_text(report_markdown(table, metrics, answers, frames, raw_test, ids))
    write_json(metrics_path, metrics)
    return metrics


def load_judged(judged: Path, names) -> dict[str, pd.DataFrame]:
    """The judged answers of the models params name (a file left by a model no longer named is not
    read), in pipeline order: base, sft, dpo."""
    frames = {}
    for name in sorted(names, key=lambda n: MODEL_ORDER.index(n)):
        path = judged / f"{name}.parquet"
        if not path.is_file():
            raise UserError(f"{path}: missing; run the judge stage for {name} first (dvc repro judge@{name})")
        frames[name] = pd.read_parquet(path)
    return frames


def win_rates(rewards: dict[str, np.ndarray], chosen: np.ndarray) -> dict[str, float]:
    """Every later model against every earlier one (dpo vs sft, sft vs base, ...), and each vs the
    dataset's chosen answer."""
    rates = {}
    for earlier, later in itertools.combinations(rewards, 2):
        rates[f"{later}_vs_{earlier}"] = win_rate(rewards[later], rewards[earlier])
    for name, values in rewards.items():
        rates[f"{name}_vs_dataset_chosen"] = win_rate(values, chosen)
    return rates


def summary_table(metrics: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for name, m in metrics["models"].items():
        rows.append({
            "model": name, "mean_reward": m["mean_reward"],
            f"ci{round(100 * metrics['confidence'])}": f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]",
            "win_vs_dataset_chosen": metrics["win_rates"][f"{name}_vs_dataset_chosen"],
            "exact_answer_accuracy": m.get("exact_answer_accuracy"),
            "mean_tokens": m["mean_tokens"],
        })
    for name, m in metrics["reference"].items():
        rows.append({"model": name, "mean_reward": m["mean_reward"],
                     f"ci{round(100 * metrics['confidence'])}": f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]"})
    return pd.DataFrame(rows)


def report_markdown(table: pd.DataFrame, metrics: dict[str, Any], answers: dict[str, pd.DataFrame],
                    frames: dict[str, pd.DataFrame], raw_test: Path, ids: pd.Series) -> str:
    lines = [
        f"# Answers judged by {metrics['scorer']}", "",
        f"{metrics['prompts']} test prompts, the same for every model; mean reward with its "
        f"{round(100 * metrics['confidence'])}% interval (normal approximation).", "",
        markdown_table(table, floatfmt=".3f"), "",
        "Win rates (how often the first model's answer outscores the second's on the same prompt; ties count half):", "",
        *[f"- {key.replace('_vs_', ' vs ').replace('_', ' ')}: {value:.3f}" for key, value in metrics["win_rates"].items()],
        "", "## Sample answers", "",
    ]
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
