"""tokenize: the raw pairs → one Arrow file per split of the run's tokenizer ids (prompts cut from the left)."""

import time
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from gptpipe.config import TokenizeConfig, load_params
from gptpipe.data.tokenizer import LEN_COLUMNS, load_tokenizer, tokenize_split, write_arrow
from gptpipe.entry import run_stage
from gptpipe.errors import reading
from gptpipe.files import atomic_path, write_json


def run(tokenize: TokenizeConfig, raw: Path, tokenizer: Path, out: Path, metrics: Path) -> dict:
    started = time.perf_counter()
    encoder = load_tokenizer(tokenizer)
    figures: dict[str, Any] = {"max_length": tokenize.max_length}
    tables = {}
    for split in ("train", "test"):
        with reading(raw / f"{split}.parquet", "Parquet table"):
            pairs = pq.read_table(raw / f"{split}.parquet")
        tables[split], counts = tokenize_split(pairs, tokenize, encoder)
        n_tokens = sum(pc.sum(tables[split].column(c)).as_py() or 0 for c in LEN_COLUMNS)
        figures[split] = {"pairs": tables[split].num_rows, "tokens": n_tokens, **counts}
    total = sum(figures[s]["tokens"] for s in ("train", "test"))
    figures["tokens_per_s"] = round(total / (time.perf_counter() - started), 1)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for split, table in tables.items():
            write_arrow(table, tmp / f"{split}.arrow")
    write_json(metrics, figures)
    return figures


def main(raw: Path, tokenizer: Path, out: Path, metrics: Path) -> None:
    params = load_params("params.yaml")
    run(params.tokenize, raw, tokenizer, out, metrics)


if __name__ == "__main__":
    run_stage(main)
