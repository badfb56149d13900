import gzip
import json
import time

import pyarrow.parquet as pq
import pytest

from gptpipe.data import hh
from gptpipe.config import DataConfig
from gptpipe.data.hh import DataFileError, ParseReport, parse_records, read_jsonl
from gptpipe.data.sources import SourceUnreachable, read_hub
from stage_runs import download

GOOD = {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."}


def test_real_hh_split_drops_exactly_the_mismatched_pairs(hh_dir):
    report = ParseReport()
    pairs = parse_records(read_jsonl(hh_dir / "harmless-base" / "test.jsonl.gz"), report)
    # SOURCES.md: 2,312 pairs, 5 of whose dialogues do not share their prompt.
    assert report.read == 2312
    assert report.dropped[hh.PROMPT_MISMATCH] == 5
    # Not in SOURCES.md, found by this parser: 4 pairs whose final response is empty.
    assert report.dropped[hh.EMPTY_RESPONSE] == 4
    assert report.kept == len(pairs) == 2312 - sum(report.dropped.values())
    for pair in pairs:
        assert pair.prompt.endswith("\n\nAssistant:")
        assert pair.chosen.strip() and pair.rejected.strip()
        assert "\n\nAssistant:" not in pair.chosen  # the response is the last turn only


def test_prompt_and_response_split_at_the_last_assistant_turn():
    record = {
        "chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: good",
        "rejected": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: bad",
    }
    pair = hh.parse_record(record)
    assert pair.prompt == "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"
    assert (pair.chosen, pair.rejected) == (" good", " bad")


def _write_lines(path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_malformed_records_are_dropped_and_counted_by_reason(tmp_path):
    path = tmp_path / "train.jsonl"
    lines = [
        json.dumps(GOOD).encode(),
        b"{not json",
        json.dumps({"chosen": GOOD["chosen"]}).encode(),  # missing field
        json.dumps({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"}).encode(),  # no Assistant turn
        json.dumps({"chosen": GOOD["chosen"], "rejected": GOOD["rejected"].replace("Hi?", "Hey?")}).encode(),
        json.dumps({"chosen": "\n\nHuman: x\n\nAssistant: ok", "rejected": "\n\nHuman: x\n\nAssistant: "}).encode(),  # empty
        json.dumps({"chosen": 3, "rejected": GOOD["rejected"]}).encode(),  # not text
        b'{"chosen": "\xff\xfe", "rejected": "x"}',  # not UTF-8
        json.dumps(GOOD).encode(),  # duplicate
    ]
    _write_lines(path, lines)
    report = ParseReport()
    pairs = parse_records(read_jsonl(path), report)
    assert len(pairs) == 1
    assert report.read == len(lines)
    assert dict(report.dropped) == {
        hh.NOT_JSON: 1,
        hh.MISSING_FIELD: 1,
        hh.NO_ASSISTANT_TURN: 1,
        hh.PROMPT_MISMATCH: 1,
        hh.EMPTY_RESPONSE: 1,
        hh.NOT_TEXT: 1,
        hh.NOT_UTF8: 1,
        hh.DUPLICATE: 1,
    }


def test_a_file_that_is_not_jsonl_is_a_clear_error(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("id,chosen,rejected\n1,a,b\n")
    with pytest.raises(DataFileError, match=r"train.jsonl: not JSON Lines"):
        read_jsonl(path)


def test_ids_are_stable_content_hashes():
    a, b = hh.parse_record(GOOD), hh.parse_record(dict(GOOD))
    assert a.id == b.id and len(a.id) == 16
    assert hh.parse_record({**GOOD, "rejected": GOOD["rejected"] + "!"}).id != a.id


def test_dir_source_carves_the_missing_split(hh_dir, tmp_path):
    cfg = DataConfig(source="dir", dir=str(hh_dir), division="harmless-base", split_fraction=0.1)
    metrics = download(cfg, seed=7, out_dir=tmp_path / "raw", metrics_path=tmp_path / "data.json")
    carved = metrics["carved"]
    assert carved["from"] == "test" and carved["file"].endswith("harmless-base/test.jsonl.gz")
    assert carved["missing"].endswith("harmless-base/train.jsonl(.gz)")
    # Train is the larger side: the test file's bulk becomes train, split_fraction of it stays test.
    assert carved["test"] == round(0.1 * 2312)
    assert carved["train"] == 2312 - round(0.1 * 2312)
    assert "train.jsonl(.gz) is missing: carving train from test.jsonl.gz" in carved["note"]
    train = pq.read_table(tmp_path / "raw" / "train.parquet")
    test = pq.read_table(tmp_path / "raw" / "test.parquet")
    assert train.num_rows > test.num_rows
    assert not set(train.column("id").to_pylist()) & set(test.column("id").to_pylist())
    dropped = sum(sum(metrics[s]["dropped"].values()) for s in ("train", "test"))
    assert dropped == 5 + 4  # prompt mismatches and empty responses, wherever the carve put them
    assert metrics["train"]["pairs"] + metrics["test"]["pairs"] == 2312 - dropped
    # The default data.max_drop_fraction passes the real split: 9 of 2,312 records (0.4%) drop.
    assert max(metrics[s]["drop_fraction"] for s in ("train", "test")) < DataConfig().max_drop_fraction
    assert json.loads((tmp_path / "data.json").read_text()) == metrics


def test_dir_source_reads_gzip_and_plain_jsonl(tmp_path):
    folder = tmp_path / "hh" / "helpful-base"
    folder.mkdir(parents=True)
    (folder / "train.jsonl.gz").write_bytes(gzip.compress((json.dumps(GOOD) + "\n").encode()))
    (folder / "test.jsonl").write_text(json.dumps(GOOD) + "\n")
    cfg = DataConfig(source="dir", dir=str(tmp_path / "hh"))
    metrics = download(cfg, seed=0, out_dir=tmp_path / "raw", metrics_path=tmp_path / "m.json")
    assert metrics["train"]["pairs"] == metrics["test"]["pairs"] == 1
    assert "carved" not in metrics


def test_bad_data_file_fails_without_writing_outputs(tmp_path):
    folder = tmp_path / "hh" / "helpful-base"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("this is not json\n")
    (folder / "test.jsonl").write_text(json.dumps(GOOD) + "\n")
    cfg = DataConfig(source="dir", dir=str(tmp_path / "hh"))
    with pytest.raises(DataFileError, match="train.jsonl: not JSON Lines"):
        download(cfg, seed=0, out_dir=tmp_path / "raw", metrics_path=tmp_path / "m.json")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "m.json").exists()


def test_synthetic_source_keeps_ground_truth(tmp_path):
    cfg = DataConfig()
    download(cfg, seed=1, out_dir=tmp_path / "raw", metrics_path=tmp_path / "m.json")
    table = pq.read_table(tmp_path / "raw" / "train.parquet")
    metrics = json.loads((tmp_path / "m.json").read_text())
    # The generator may repeat a whole pair; the parser keeps one copy and counts the rest.
    assert table.num_rows == cfg.synthetic.n_train - metrics["train"]["dropped"].get(hh.DUPLICATE, 0)
    assert set(metrics["train"]["dropped"]) <= {hh.DUPLICATE}
    flawed = table.column("flawed").to_pylist()
    assert abs(sum(flawed) - cfg.synthetic.flawed_fraction * cfg.synthetic.n_train) <= 2
    assert all(table.column("answer").to_pylist())


def test_hub_source_offline_names_the_offline_sources(monkeypatch):
    # The hub cannot be reached: an endpoint on a closed local port makes that certain anywhere, and
    # the client's offline mode (read once at import, so setting the env var here would be too late)
    # is off, so the reachability check runs rather than the cache lookup.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    started = time.monotonic()
    with pytest.raises(SourceUnreachable) as err:
        read_hub("helpful-base")
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "Anthropic/hh-rlhf" in message and "data.source=dir" in message and "synthetic" in message
    assert "http://127.0.0.1:9 is unreachable" in message
    assert "\n" not in message


# ids, not the bytes: a gzip header holds its write time, so two xdist workers collecting a second
# apart would name the case differently and refuse to run ("Different tests were collected").
@pytest.mark.parametrize("content", [b"", b"\n\n  \n", gzip.compress(b"", mtime=0)], ids=["empty", "blank-lines", "empty-gzip"])
def test_an_empty_file_is_named_empty_not_bad_json(tmp_path, content):
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataFileError, match=r"train.jsonl: empty \(no records\); download it again, or remove it"):
        hh.read_jsonl(path)
