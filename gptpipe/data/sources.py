"""Where preference pairs come from: the hub, a local folder in the hub's layout, or the generator.

All three yield raw HH records that go through the one parser in `hh`, so a synthetic pair and a real
one are read by the same code. The download stage writes `data/raw/{train,test}.parquet` and
`metrics/data.json` (records read, kept, dropped by reason, per split).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gptpipe.data import synthetic
from gptpipe.config import DataConfig
from gptpipe.errors import UserError
from gptpipe.files import atomic_path
from gptpipe.data.hh import DataFileError, Pair, ParseReport, parse_records, read_jsonl

SPLITS = ("train", "test")
HF_DATASET = "Anthropic/hh-rlhf"
META_COLUMNS = ("family", "question", "answer", "chosen_quality", "rejected_quality", "flawed")


class SourceUnreachable(UserError):
    """A remote asset could not be fetched; the message names it and the offline alternative."""


def parse_source(cfg: DataConfig, seed: int) -> tuple[dict[str, list[Pair]], dict[str, Any]]:
    """Read the configured source and parse it: the pairs per split, and the metrics that say what
    was read, kept and dropped by reason (the download stage writes both)."""
    raw, carved = read_source(cfg, seed)
    metrics: dict[str, Any] = {"source": cfg.source, "division": _division(cfg)}
    pairs_by_split = {}
    for split in SPLITS:
        report = ParseReport()
        pairs = parse_records(raw[split], report)
        pairs = cap_pairs(pairs, cfg.max_pairs, seed)
        pairs_by_split[split] = pairs
        metrics[split] = report.as_dict() | {"pairs": len(pairs)}
    if carved:
        metrics["carved"] = carved
    _refuse_empty(pairs_by_split, metrics, cfg)
    return pairs_by_split, metrics


def read_source(cfg: DataConfig, seed: int) -> tuple[dict[str, list[Any]], dict[str, Any] | None]:
    """Raw records per split, and (for a one-split folder) how the other split was carved."""
    if cfg.source == "synthetic":
        s = cfg.synthetic
        splits = synthetic.generate_splits(
            s.n_train, s.n_test, seed=seed, flawed_fraction=s.flawed_fraction, max_turns=s.max_turns
        )
        return splits, None
    if cfg.source == "dir":
        return read_folder(Path(cfg.dir), cfg.division, cfg.split_fraction, seed)
    return read_hub(cfg.division), None


def read_folder(
    root: Path, division: str, split_fraction: float, seed: int
) -> tuple[dict[str, list[Any]], dict[str, Any] | None]:
    """`<root>/<division>/{train,test}.jsonl[.gz]`; a missing split is carved from the other."""
    folder = root / division
    found = {split: _split_file(folder, split) for split in SPLITS}
    present = [split for split, path in found.items() if path is not None]
    if not present:
        raise DataFileError(
            f"{folder}: no train.jsonl[.gz] or test.jsonl[.gz]; data.dir must hold "
            f"<division>/<split>.jsonl[.gz] as the hub does (data.division={division!r})"
        )
    records = {split: read_jsonl(found[split]) for split in present}
    if len(present) == 2:
        return records, None
    (have,) = present
    missing = "test" if have == "train" else "train"
    records[have], records[missing] = carve(records[have], split_fraction, seed)
    return records, {
        "from": have,
        "fraction": split_fraction,
        "seed": seed,
        have: len(records[have]),
        missing: len(records[missing]),
    }


def carve(records: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded split of one file's records: (the rest, the carved `fraction`)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_carved = max(1, round(fraction * len(records)))
    carved = set(order[:n_carved])
    rest = [r for i, r in enumerate(records) if i not in carved]
    return rest, [r for i, r in enumerate(records) if i in carved]


def read_hub(division: str) -> dict[str, list[Any]]:
    """HH-RLHF from the Hugging Face hub (real loading code; fails fast and plainly offline)."""
    import datasets  # heavy import, only for this source

    try:
        loaded = datasets.load_dataset(HF_DATASET, data_dir=division)
    except Exception as err:  # the hub client raises many types; all mean "could not fetch"
        raise SourceUnreachable(
            f"data.source=hf: could not load {HF_DATASET} (data_dir={division!r}) from the "
            f"Hugging Face hub ({type(err).__name__}: {_first_line(err)}). Offline, use "
            "data.source=dir with data.dir=/absolute/folder holding "
            f"{division}/train.jsonl.gz and test.jsonl.gz, or data.source=synthetic"
        ) from None
    return {split: list(loaded[split]) for split in SPLITS}


def cap_pairs(pairs: list[Pair], max_pairs: int | None, seed: int) -> list[Pair]:
    """A seeded sample of at most max_pairs, in the original order."""
    if max_pairs is None or len(pairs) <= max_pairs:
        return pairs
    keep = set(random.Random(seed).sample(range(len(pairs)), max_pairs))
    return [pair for i, pair in enumerate(pairs) if i in keep]


def write_pairs(pairs: list[Pair], path: Path) -> None:
    columns: dict[str, list[Any]] = {
        "id": [p.id for p in pairs],
        "prompt": [p.prompt for p in pairs],
        "chosen": [p.chosen for p in pairs],
        "rejected": [p.rejected for p in pairs],
    }
    if any(p.meta for p in pairs):
        for key in META_COLUMNS:
            columns[key] = [p.meta.get(key) for p in pairs]
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp)


def read_pairs(path: Path) -> pa.Table:
    return pq.read_table(path)


def _split_file(folder: Path, split: str) -> Path | None:
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl"):
        if (folder / name).is_file():
            return folder / name
    return None


def _refuse_empty(
    pairs_by_split: dict[str, list[Pair]], metrics: dict[str, Any], cfg: DataConfig
) -> None:
    for split, pairs in pairs_by_split.items():
        if not pairs:
            raise DataFileError(
                f"data ({cfg.source}): no parseable pair in the {split} split "
                f"(dropped: {metrics[split]['dropped']}); check the input files"
            )


def _division(cfg: DataConfig) -> str | None:
    return None if cfg.source == "synthetic" else cfg.division


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""
