"""sft: models/base fine-tuned on prompt → chosen response of the filtered train pairs → models/sft."""

from pathlib import Path

from gptpipe.config import load_params
from gptpipe.errors import run_or_exit
from gptpipe.train.language_model import run_sft


def main() -> None:
    params = load_params("params.yaml")
    run_sft(
        params, Path("data/tokenized"), Path("models/base"), Path("models/sft"),
        Path("metrics/sft.json"), Path("plots/sft"), train_pairs=Path("data/subsets/train.arrow"),
        raw_test=Path("data/raw/test.parquet"),
    )


if __name__ == "__main__":
    run_or_exit(main)
