"""download: the configured HH source (hub, folder or generator) → one parquet per split, and the
metrics that say what was read, kept and dropped by reason."""

from pathlib import Path

from gptpipe.config import DataConfig, Params, load_params
from gptpipe.data.sources import SPLITS, parse_source, write_pairs
from gptpipe.entry import run_stage
from gptpipe.files import write_json


def run(data: DataConfig, seed: int, out: Path, metrics: Path, params: Params | None = None) -> dict:
    # Every check on the input runs in parse_source; nothing is written until it has passed, so bad
    # input leaves what an earlier run wrote to `out` as it was.
    pairs_by_split, figures = parse_source(data, seed)
    if params is not None:
        params.check_fits_data(len(pairs_by_split["train"]))
    for split in SPLITS:
        write_pairs(pairs_by_split[split], out / f"{split}.parquet")
    write_json(metrics, figures)
    return figures


def main(out: Path, metrics: Path) -> None:
    params = load_params("params.yaml")
    # filter.keep and the batch sizes are checked here, not declared as dependencies: they change no
    # output of this stage, and declaring them would read the data again on every change of them.
    run(params.data, params.shared.seed, out, metrics, params)


if __name__ == "__main__":
    run_stage(main)
