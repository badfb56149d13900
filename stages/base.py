"""base: models/base, the model fine-tuning starts from (hub GPT-2, or pretrained here)."""

from pathlib import Path

from gptpipe.config import load_params
from gptpipe.errors import run_or_exit
from gptpipe.train.language_model import run_base


def main() -> None:
    params = load_params("params.yaml")
    run_base(params, Path("data/tokenized"), Path("models/base"), Path("metrics/base.json"), Path("plots/base"))


if __name__ == "__main__":
    run_or_exit(main)
