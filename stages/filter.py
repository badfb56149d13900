"""filter: the train pairs SFT trains on: the top `filter.keep` by `chosen_reward` or `margin`, a
random N (the control that separates quality from quantity), or all of them."""

from pathlib import Path

import pandas as pd
import pyarrow as pa

from gptpipe.config import FilterConfig, check_keep_fits, load_params
from gptpipe.data.subsets import filter_metrics, select
from gptpipe.data.tokenizer import read_arrow, write_arrow
from gptpipe.entry import run_stage
from gptpipe.errors import UserError, reading
from gptpipe.files import atomic_path, write_json


def run(filter_cfg: FilterConfig, seed: int, scored: Path, tokenized: Path, out: Path, metrics: Path) -> dict:
    with reading(scored / "train.parquet", "Parquet table"):
        frame = pd.read_parquet(scored / "train.parquet")
    table = read_arrow(tokenized / "train.arrow")
    if frame["id"].tolist() != table.column("id").to_pylist():
        raise UserError(f"{scored}/train.parquet: its pairs differ from {tokenized}/train.arrow; rerun the score stage")
    check_keep_fits(filter_cfg.keep, len(frame))
    unranked = int(frame[filter_cfg.by].isna().sum()) if filter_cfg.by != "random" else 0
    if filter_cfg.keep is not None and unranked:  # NaN sorts anywhere: a top N would be arbitrary
        why = "the judge scored nothing (reward.backend=none)" if frame["chosen_reward"].isna().all() else "they have no rejected response"
        raise UserError(f"filter.by: {unranked} of {len(frame)} train pairs have no {filter_cfg.by} ({why}); "
                        "set filter.by=random (a seeded N) or filter.keep=null (all)")
    keep = filter_cfg.keep if filter_cfg.keep is not None else len(frame)
    kept = select(frame, keep, filter_cfg.by, seed)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        write_arrow(table.take(pa.array(sorted(kept))), tmp / "train.arrow")
    figures = filter_metrics(frame, kept, filter_cfg.by)
    write_json(metrics, figures)
    return figures


def main(scored: Path, tokenized: Path, out: Path, metrics: Path) -> None:
    params = load_params("params.yaml")
    run(params.filter, params.shared.seed, scored, tokenized, out, metrics)


if __name__ == "__main__":
    run_stage(main)
