"""judge: the judge's reward of every answer one model gave (the same judge that filtered the
training data), and on data with ground truth whether each answer is right and its judge-free label."""

from pathlib import Path

import pandas as pd

from gptpipe.config import EvaluateConfig, ScoreConfig, load_params
from gptpipe.data.answer_check import response_is_correct
from gptpipe.data.answer_labels import label_answer
from gptpipe.entry import run_stage
from gptpipe.evaluation.judge import ground_truth, read_answers, reward_summary
from gptpipe.files import atomic_path, write_json
from gptpipe.errors import UserError
from gptpipe.models.reward import NoJudge, load_scorer
from gptpipe.train.runtime import inference_device


def run(device: str, score: ScoreConfig, hf_max_length: int, evaluate: EvaluateConfig, name: str, answers: Path, reward: Path,
        raw_test: Path, out: Path, metrics: Path) -> dict:
    given = read_answers(answers)
    scorer = load_scorer(reward, score.batch_size, inference_device(device), hf_max_length)
    if isinstance(scorer, NoJudge):
        raise UserError(f"judge@{name}: reward.backend=none, so there is no judge to score answers; set "
                        f"reward.backend=trained (preference data) or hf, or stop at `dvc repro generate@{name}`")
    frame = pd.DataFrame({
        "id": given["id"], "reward": scorer.score(given["prompt"].tolist(), given["response"].tolist(), desc=name),
        "tokens": given["tokens"], "stopped": given["stopped"],
    })
    truth = ground_truth(raw_test)
    if truth is not None:
        pairs = list(zip(given["id"], given["response"], strict=True))
        frame["family"] = [truth[i]["family"] for i, _ in pairs]
        frame["correct"] = [response_is_correct(r, truth[i]["answer"]) for i, r in pairs]
        frame["label"] = [label_answer(r, truth[i]["answer"]) for i, r in pairs]  # judge-free: sound … rude
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)
    figures = {"model": name, "scorer": scorer.name, **reward_summary(frame, evaluate.confidence)}
    write_json(metrics, figures)
    return figures


def main(name: str, answers: Path, reward: Path, raw_test: Path, out: Path, metrics: Path) -> None:
    params = load_params("params.yaml")
    run(params.shared.device, params.score, params.reward.hf_max_length, params.evaluate, name, answers, reward, raw_test, out, metrics)


if __name__ == "__main__":
    run_stage(main)
