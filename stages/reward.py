"""reward: models/reward, a Bradley-Terry reward model trained from models/base, or the hub classifier."""

from pathlib import Path

from gptpipe.config import load_params
from gptpipe.errors import run_or_exit
from gptpipe.evaluation.scores import run_reward


def main() -> None:
    params = load_params("params.yaml")
    run_reward(params, Path("data/tokenized"), Path("models/base"), Path("models/reward"),
               Path("metrics/reward.json"), Path("plots/reward"))


if __name__ == "__main__":
    run_or_exit(main)
