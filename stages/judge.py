"""judge <model>: the reward of each generated answer of one model → data/judged/<model>.parquet."""

import sys
from pathlib import Path

from gptpipe.config import load_params
from gptpipe.errors import run_or_exit
from gptpipe.evaluation.judge import run_judge


def main() -> None:
    name = sys.argv[1]
    params = load_params("params.yaml")
    run_judge(params, name, Path(f"data/generated/{name}.jsonl"), Path("models/reward"), Path("data/raw/test.parquet"),
              Path(f"data/judged/{name}.parquet"), Path(f"metrics/judge/{name}.json"))


if __name__ == "__main__":
    run_or_exit(main)
