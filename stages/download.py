"""download: the configured HH source → data/raw/{train,test}.parquet, metrics/data.json."""

from pathlib import Path

from gptpipe.config import load_params
from gptpipe.errors import run_or_exit
from gptpipe.data.sources import download


def main() -> None:
    params = load_params("params.yaml")
    download(params.data, params.shared.seed, Path("data/raw"), Path("metrics/data.json"))


if __name__ == "__main__":
    run_or_exit(main)
