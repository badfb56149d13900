"""dpo: models/sft trained with DPO on the train preference pairs → models/dpo."""

from pathlib import Path

from gptpipe.config import load_params
from gptpipe.train.dpo import run_dpo
from gptpipe.errors import run_or_exit


def main() -> None:
    params = load_params("params.yaml")
    run_dpo(
        params, Path("data/tokenized"), Path("models/sft"), Path("models/dpo"),
        Path("metrics/dpo.json"), Path("plots/dpo"),
    )


if __name__ == "__main__":
    run_or_exit(main)
