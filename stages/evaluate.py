"""evaluate: the judged models side by side on the same prompts: mean reward with its interval, win
rates between models and against the dataset's chosen response (scored by the same judge), a PNG of
the reward distributions and a readable report with sample answers."""

from pathlib import Path
from typing import Any

import pandas as pd

from gptpipe import figures as plots
from gptpipe.config import EvaluateConfig, load_params
from gptpipe.entry import run_stage
from gptpipe.errors import UserError, reading
from gptpipe.evaluation.judge import (
    judge_free_verdicts, load_judged, read_answers, report_markdown, reward_summary, summary_table,
)
from gptpipe.evaluation.stats import mean_interval, win_rates
from gptpipe.files import atomic_path, write_json


def run(models: tuple[str, ...], evaluate: EvaluateConfig, judged: Path, generated: Path, scored_test: Path,
        raw_test: Path, metrics: Path, plots_dir: Path) -> dict:
    frames = load_judged(judged, models)
    ids = frames[next(iter(frames))]["id"]
    for name, frame in frames.items():
        if frame["id"].tolist() != ids.tolist():
            raise UserError(f"{judged}/{name}.parquet: answers other prompts than the other models; rerun generate")
    with reading(scored_test, "Parquet table"):
        dataset = pd.read_parquet(scored_test)
    dataset = dataset.set_index("id").loc[ids]
    confidence = evaluate.confidence
    rewards = {name: frame["reward"].to_numpy() for name, frame in frames.items()}
    references = {"dataset chosen": dataset["chosen_reward"].to_numpy(), "dataset rejected": dataset["rejected_reward"].to_numpy()}
    figures: dict[str, Any] = {
        "prompts": len(ids), "scorer": str(dataset["scorer"].iloc[0]), "confidence": confidence,
        "models": {name: reward_summary(frame, confidence) for name, frame in frames.items()},
        "reference": {name: {"mean_reward": float(v.mean()), **dict(zip(("ci_low", "ci_high"), mean_interval(v, confidence)))}
                      for name, v in references.items()},
        "win_rates": win_rates(rewards, references["dataset chosen"]),
        # What the ground truth says, beside the judge's win rates: the verdicts to believe.
        "judge_free_verdicts": judge_free_verdicts(frames, confidence),
    }
    table = summary_table(figures)
    plots.reward_distributions({**rewards, **references}, plots_dir / "rewards.png",
                               f"rewards of answers to {len(ids)} test prompts ({figures['scorer']})")
    answers = {name: read_answers(generated / f"{name}.jsonl").set_index("id").loc[ids] for name in frames}
    with atomic_path(plots_dir / "report.md") as tmp:
        tmp.write_text(report_markdown(table, figures, answers, frames, raw_test, ids))
    write_json(metrics, figures)
    return figures


def main(judged: Path, generated: Path, scored_test: Path, raw_test: Path, metrics: Path, plots: Path) -> None:
    params = load_params("params.yaml")
    run(params.generate.models, params.evaluate, judged, generated, scored_test, raw_test, metrics, plots)


if __name__ == "__main__":
    run_stage(main)
