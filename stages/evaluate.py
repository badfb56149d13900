"""evaluate: the judged models side by side: mean rewards, win rates, a report and a PNG."""

from pathlib import Path

from gptpipe.config import load_params
from gptpipe.errors import run_or_exit
from gptpipe.evaluation.judge import run_evaluate


def main() -> None:
    params = load_params("params.yaml")
    run_evaluate(params, Path("data/judged"), Path("data/generated"), Path("data/scored/test.parquet"),
                 Path("data/raw/test.parquet"), Path("metrics/evaluate.json"), Path("plots/evaluate"))


if __name__ == "__main__":
    run_or_exit(main)
