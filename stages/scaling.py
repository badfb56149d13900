"""scaling: isoFLOP profiles and the compute-optimal table → plots/scaling/, metrics/scaling.json."""

from pathlib import Path

from gptpipe.config import load_params
from gptpipe.errors import run_or_exit
from gptpipe.scaling.runs import run_scaling


def main() -> None:
    params = load_params("params.yaml")
    run_scaling(params, Path("data/tokenized"), Path("plots/scaling"), Path("metrics/scaling.json"))


if __name__ == "__main__":
    run_or_exit(main)
