"""download: the configured HH source (hub, folder or generator) → one parquet per split, and the
metrics that say what was read, kept and dropped by reason."""

from pathlib import Path

from gptpipe.config import DataConfig, load_params
from gptpipe.data.sources import SPLITS, parse_source, write_pairs
from gptpipe.data.subsets import check_keep_fits
from gptpipe.entry import run_stage
from gptpipe.files import write_json


def run(data: DataConfig, seed: int, out: Path, metrics: Path, keep: int | None = None) -> dict:
    # Every check on the input runs in parse_source; nothing is written until it has passed, so bad
    # input leaves what an earlier run wrote to `out` as it was.
    pairs_by_split, figures = parse_source(data, seed)
    check_keep_fits(keep, len(pairs_by_split["train"]))
    for split in SPLITS:
        write_pairs(pairs_by_split[split], out / f"{split}.parquet")
    write_json(metrics, figures)
    return figures


def main(out: Path, metrics: Path) -> None:
    params = load_params("params.yaml")
    # filter.keep is checked here, not declared as a dependency: it changes no output of this stage,
    # and declaring it would read the data again on every change of the subset size.
    run(params.data, params.shared.seed, out, metrics, params.filter.keep)


if __name__ == "__main__":
    run_stage(main)
