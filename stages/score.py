"""score: the reward of every train and test pair's responses → data/scored/<split>.parquet."""

from pathlib import Path

from gptpipe.config import load_params
from gptpipe.errors import run_or_exit
from gptpipe.evaluation.scores import run_score


def main() -> None:
    params = load_params("params.yaml")
    run_score(params, Path("data/raw"), Path("models/reward"), Path("data/scored"),
              Path("metrics/score.json"), Path("plots/score"))


if __name__ == "__main__":
    run_or_exit(main)
