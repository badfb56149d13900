"""Where preference pairs come from: the hub, a local folder in the hub's layout, or the generator.

All three yield raw HH records that go through the one parser in `hh`, so a synthetic pair and a real
one are read by the same code. The download stage writes `data/raw/{train,test}.parquet` and
`metrics/data.json` (records read, kept, dropped by reason, per split). A split that cannot be used
(empty, or dropping more than data.max_drop_fraction) is an error raised before anything is written.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import json

from gptpipe.data import formats, synthetic
from gptpipe.config import DataConfig
from gptpipe.errors import UserError, first_line
from gptpipe.files import atomic_path
from gptpipe.hub import unreachable_reason
from gptpipe.data.hh import DataFileError, Pair, ParseReport, parse_records, read_jsonl

SPLITS = ("train", "test")
HF_DATASET = "Anthropic/hh-rlhf"
META_COLUMNS = ("family", "question", "answer", "chosen_quality", "rejected_quality", "flawed")


class SourceUnreachable(UserError):
    """A remote asset could not be fetched; the message names it and the offline alternative."""


@dataclass(frozen=True)
class RawSplits:
    records: dict[str, list[Any]]  # decoded records per split, Unparseable markers included
    origin: dict[str, str]  # per split, where its records came from (a file, the hub, the generator)
    carved: dict[str, Any] | None = None  # a one-split folder: which file was carved how


def parse_source(cfg: DataConfig, seed: int) -> tuple[dict[str, list[Pair]], dict[str, Any]]:
    """Read the configured source and parse it: the pairs per split, and the metrics that say what
    was read, kept and dropped by reason (the download stage writes both). Every check runs here,
    before the stage writes anything: an unusable split is a DataFileError naming its origin."""
    raw = read_source(cfg, seed)
    metrics: dict[str, Any] = {"source": cfg.source, "division": _division(cfg)}
    if cfg.source == "hf":
        metrics["dataset"] = cfg.hf_dataset
    if raw.carved:
        metrics["carved"] = raw.carved
    pairs_by_split, reports = {}, {}
    for split in SPLITS:
        reports[split] = ParseReport()
        fmt = resolve_format(raw.records[split], cfg.format, raw.origin[split])
        metrics.setdefault("format", fmt)
        if metrics["format"] != fmt:
            raise DataFileError(f"data: the train split is {metrics['format']} but the test split from "
                                f"{raw.origin[split]} is {fmt}; give both splits one format")
        pairs = parse_records(raw.records[split], reports[split], lambda r, fmt=fmt: formats.parse(r, fmt))
        if cfg.source != "synthetic":  # ground truth (answers, flaws) is the generator's alone; a
            pairs = [replace(p, meta={}) for p in pairs]  # user's `meta` field is not (judge@ reads it)
        pairs_by_split[split] = cap_pairs(pairs, cfg.max_pairs, seed)
        metrics[split] = reports[split].as_dict() | {
            "origin": raw.origin[split],
            "pairs": len(pairs_by_split[split]),
        }
    metrics["preference"] = metrics["format"] not in formats.SINGLE_RESPONSE
    for split in SPLITS:
        _refuse_unusable(split, reports[split], raw, cfg)
    return pairs_by_split, metrics


def read_source(cfg: DataConfig, seed: int) -> RawSplits:
    """Raw records per split, where each came from, and (for a one-split folder) the carve."""
    if cfg.source == "synthetic":
        s = cfg.synthetic
        splits = synthetic.generate_splits(
            s.n_train, s.n_test, seed=seed, flawed_fraction=s.flawed_fraction, max_turns=s.max_turns
        )
        return RawSplits(splits, {split: "the synthetic generator" for split in SPLITS})
    if cfg.source == "dir":
        return read_folder(Path(cfg.dir), cfg.division, cfg.split_fraction, seed)
    records, origin = read_hub(cfg.division, cfg.hf_dataset)
    if len(records) == 2:
        return RawSplits(records, {split: origin for split in SPLITS})
    (have,) = records  # one split (Alpaca's train alone): the other is carved from it, as from a folder
    missing = "test" if have == "train" else "train"
    return carve_splits(records[have], have, f"{origin}'s {missing} split", origin, have, cfg.split_fraction, seed)


def read_folder(root: Path, division: str, split_fraction: float, seed: int) -> RawSplits:
    """`<root>/<division>/{train,test}.jsonl[.gz]`; a missing split is carved from the other.

    The carve always leaves train the larger side: `split_fraction` (< 0.5) of the one file becomes
    test and the rest train, whether that file was train (it keeps most of its records) or test (its
    bulk becomes train). A user with only the hub's small test file gets a usable train split, not a
    10% one beside a 90% test split.
    """
    folder = root / division
    found = {split: _split_file(folder, split) for split in SPLITS}
    present = [split for split, path in found.items() if path is not None]
    if not present:
        raise DataFileError(
            f"{folder}: no train or test file (.jsonl, .jsonl.gz, .json or .parquet); data.dir must hold "
            f"<division>/<split>.<ext> as the hub does (data.division={division!r})"
        )
    records = {split: read_records(found[split]) for split in present}
    if len(present) == 2:
        return RawSplits(records, {split: str(found[split]) for split in SPLITS})
    (have,) = present
    missing = "test" if have == "train" else "train"
    source = found[have]
    return carve_splits(records[have], have, f"{folder / missing}.jsonl(.gz)", str(source), source.name,
                        split_fraction, seed)


def carve_splits(records: list[Any], have: str, missing: str, origin: str, name: str, fraction: float,
                 seed: int) -> RawSplits:
    """Both splits from the one a folder or a dataset has (`have`, read from `origin`, called `name`
    in the note); `missing` names what was not there."""
    train, test = carve(records, fraction, seed)
    role = "stays test" if have == "test" else "becomes test"
    other = "test" if have == "train" else "train"
    note = (
        f"{missing} is missing: carving {other} from {name} "
        f"(data.split_fraction={fraction} of it {role}, seed {seed}: "
        f"train {len(train)}, test {len(test)} records)"
    )
    carved = {"missing": missing, "file": origin, "from": have, "fraction": fraction, "seed": seed,
              "train": len(train), "test": len(test), "note": note}
    return RawSplits({"train": train, "test": test}, {split: origin for split in SPLITS}, carved)


def carve(records: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded split of one file's records: (the rest, the carved `fraction`, at least one)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_carved = max(1, round(fraction * len(records)))
    carved = set(order[:n_carved])
    rest = [r for i, r in enumerate(records) if i not in carved]
    return rest, [r for i, r in enumerate(records) if i in carved]


def read_hub(division: str, dataset: str = HF_DATASET) -> tuple[dict[str, list[Any]], str]:
    """A hub dataset (or a local folder datasets reads): its train and test records, or the one of them
    it has, and where they came from. Real loading code; fails fast and plainly offline.

    Anthropic/hh-rlhf is read at data_dir=division; another dataset whole, its splits named train and
    test or beginning so (UltraFeedback's train_prefs, test_prefs). Without network
    `datasets.load_dataset` retries for ~25 s, printing a line per retry: the hub is probed first
    (gptpipe.hub). In the hub client's offline mode (HF_HUB_OFFLINE=1) no request is made: datasets
    reads its cache. A local folder needs no hub.
    """
    data_dir = division if dataset == HF_DATASET else None
    origin = f"{dataset}" + (f" (data_dir={division!r})" if data_dir else "") + (
        "" if Path(dataset).is_absolute() else " on the Hugging Face hub")
    why = None if Path(dataset).is_absolute() else unreachable_reason()
    if why:
        raise _unreachable(origin, division, why)
    import datasets  # heavy import, only for this source

    try:
        loaded = datasets.load_dataset(dataset, data_dir=data_dir)
    except Exception as err:  # the hub client raises many types; all mean "could not fetch"
        why = f"could not load it ({type(err).__name__}: {first_line(err)})"
        raise _unreachable(origin, division, why) from None
    named = {split: next((n for n in loaded if n == split), None) or next((n for n in loaded if n.startswith(split)), None)
             for split in SPLITS}
    if not any(named.values()):
        raise DataFileError(f"data.hf_dataset: {origin} has no train or test split (it has {', '.join(loaded)}); "
                            "save the split you want as train.jsonl in a folder and use data.source=dir")
    return {split: list(loaded[name]) for split, name in named.items() if name}, origin


def _unreachable(origin: str, division: str, why: str) -> SourceUnreachable:
    return SourceUnreachable(
        f"data.source=hf: {origin}: {why}. "
        "Offline, use data.source=dir with data.dir=/absolute/folder holding "
        f"{division}/train.jsonl.gz and test.jsonl.gz, data.hf_dataset=/absolute/folder that datasets reads, "
        "or data.source=synthetic (or HF_HUB_OFFLINE=1 for a copy already in the Hugging Face cache)"
    )


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
        "rejected": [p.rejected for p in pairs],  # null for single responses (SFT data)
    }
    if any(p.meta for p in pairs):
        for key in META_COLUMNS:
            columns[key] = [p.meta.get(key) for p in pairs]
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp)


def read_pairs(path: Path) -> pa.Table:
    return pq.read_table(path)


def resolve_format(records: list[Any], stated: str, origin: str) -> str:
    """The format of a split: stated, or told by the fields of its first record; a stated format
    the fields contradict is an error (parsing on would drop every record as missing_field)."""
    first = next((r for r in records if isinstance(r, dict)), None)
    detected = formats.detect(first)
    fields = ", ".join(sorted(first)) if first else "none"
    if first is None:  # no record at all: nothing to tell, and the usable-split check names it
        return "hh" if stated == "auto" else stated
    if stated == "auto":
        if detected is None:
            raise DataFileError(f"{origin}: cannot tell the record format from the fields ({fields}); set "
                                f"data.format to one of {', '.join(formats.FORMATS[1:])}")
        return detected
    if detected is not None and detected != stated:
        raise DataFileError(f"{origin}: data.format={stated} but the first record's fields ({fields}) are "
                            f"{detected}'s; set data.format: {detected} (or auto)")
    return stated


def read_records(path: Path) -> list[Any]:
    """Decoded records of a JSON Lines (.jsonl[.gz]), JSON array (.json) or Parquet file."""
    if path.suffix == ".parquet":
        try:
            return pq.read_table(path).to_pylist()
        except pa.ArrowException as err:
            raise DataFileError(f"{path}: not a readable Parquet file ({first_line(err)}); write it again") from None
    if path.suffix == ".json":
        try:
            values = json.loads(path.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataFileError(f"{path}: not JSON ({type(err).__name__}); expected one array of records") from None
        if not isinstance(values, list) or not values:
            raise DataFileError(f"{path}: not a non-empty JSON array of records; write one [{{...}}, ...] array")
        return values
    return read_jsonl(path)


def _split_file(folder: Path, split: str) -> Path | None:
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl", f"{split}.json", f"{split}.parquet"):
        if (folder / name).is_file():
            return folder / name
    return None


def _refuse_unusable(split: str, report: ParseReport, raw: RawSplits, cfg: DataConfig) -> None:
    """An empty split, or one that dropped more than data.max_drop_fraction, is an error naming the
    split, its origin, the top drop reasons and the fix (and the carve, when there was one)."""
    reasons = ", ".join(f"{reason} {n}" for reason, n in report.dropped.most_common(3)) or "none"
    carve_note = f"; {raw.carved['note']}" if raw.carved else ""
    where = f"data ({cfg.source}): the {split} split from {raw.origin[split]}"
    if not report.kept:
        fix = "check the input files"
        if raw.carved and not report.read:
            fix = "supply the missing file, or more records"
        raise DataFileError(
            f"{where} has no parseable pair ({report.read} records read; dropped: {reasons})"
            f"{carve_note}; {fix}"
        )
    if report.drop_fraction > cfg.max_drop_fraction:
        raise DataFileError(
            f"{where} dropped {report.drop_fraction:.1%} of its {report.read} records "
            f"({sum(report.dropped.values())} dropped; top reasons: {reasons}), above "
            f"data.max_drop_fraction={cfg.max_drop_fraction}{carve_note}; check that file, or "
            "raise data.max_drop_fraction if these drops are expected"
        )


def _division(cfg: DataConfig) -> str | None:
    return None if cfg.source == "synthetic" else cfg.division
