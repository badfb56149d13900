"""filter: the train pairs SFT trains on (top N by reward, or a random N) → data/subsets/train.arrow."""

from pathlib import Path

from gptpipe.config import load_params
from gptpipe.errors import run_or_exit
from gptpipe.evaluation.scores import run_filter


def main() -> None:
    params = load_params("params.yaml")
    run_filter(params, Path("data/scored"), Path("data/tokenized"), Path("data/subsets"), Path("metrics/filter.json"))


if __name__ == "__main__":
    run_or_exit(main)
