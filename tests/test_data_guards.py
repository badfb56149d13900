"""Guards on the download stage's input: each bad input is either a counted drop reason in
metrics/data.json or a one-line UserError naming the key or file and the fix, raised before the stage
writes anything, so what an earlier run left in out_dir survives."""

import gzip
import json
import socket
import time

import pyarrow.parquet as pq
import pytest

from gptpipe.config import DataConfig, ParamsError, parse_params
from gptpipe.data import hh
from gptpipe.data.sources import SourceUnreachable
from gptpipe.errors import UserError, run_or_exit
from stage_runs import download
from stages import download as download_stage

SENTINEL = b"an earlier run's output"


def pair(i: int, chosen: str = " Sure, here it is.", rejected: str = " No.") -> dict:
    prompt = f"\n\nHuman: Question number {i}?\n\nAssistant:"
    return {"chosen": prompt + chosen, "rejected": prompt + rejected}


def mismatched(i: int) -> dict:
    return {"chosen": pair(i)["chosen"], "rejected": pair(i + 1000)["rejected"]}


def write_split(folder, name: str, records: list) -> None:
    """records: dicts (one JSON line each) or raw bytes lines; a .gz name is gzip'd."""
    folder.mkdir(parents=True, exist_ok=True)
    data = b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)
    (folder / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)


def dir_cfg(root, **kwargs) -> DataConfig:
    return DataConfig(source="dir", dir=str(root), division="helpful-base", **kwargs)


def dir_params(root, keep=None):
    return parse_params({"data": {"source": "dir", "dir": str(root)}, "filter": {"keep": keep}})


@pytest.fixture
def out(tmp_path):
    """An out_dir holding an earlier run's train.parquet; a failed run must leave it as it was."""
    out_dir = tmp_path / "raw"
    out_dir.mkdir()
    (out_dir / "train.parquet").write_bytes(SENTINEL)
    return out_dir


def fail(cfg, out_dir, metrics_path, capsys) -> str:
    """Run the download stage as its entry point does; assert it exits 1 with one line, that
    nothing was written, and return that line."""
    with pytest.raises(SystemExit) as exit_:
        run_or_exit(lambda: download(cfg, seed=0, out_dir=out_dir, metrics_path=metrics_path))
    assert exit_.value.code == 1
    line = capsys.readouterr().err
    assert line.startswith("error: ") and line.count("\n") == 1
    assert (out_dir / "train.parquet").read_bytes() == SENTINEL
    assert not (out_dir / "test.parquet").exists() and not metrics_path.exists()
    return line


# 1. A pair whose two responses are the same carries no preference: dropped, counted.


def test_identical_responses_are_dropped_and_counted(tmp_path):
    assert hh.parse_record(pair(0)).chosen == " Sure, here it is."
    for chosen, rejected in [(" Same.", " Same."), (" Same.", "Same.  ")]:  # whitespace is no preference
        with pytest.raises(hh.Unparseable) as err:
            hh.parse_record(pair(0, chosen, rejected))
        assert err.value.reason == hh.IDENTICAL_RESPONSES

    folder = tmp_path / "hh" / "helpful-base"
    write_split(folder, "train.jsonl", [pair(i) for i in range(19)] + [pair(99, " Same.", " Same.")])
    write_split(folder, "test.jsonl.gz", [pair(i) for i in range(100, 110)])
    cfg = dir_cfg(tmp_path / "hh")
    metrics = download(cfg, seed=0, out_dir=tmp_path / "raw", metrics_path=tmp_path / "m.json")
    assert metrics["train"]["dropped"] == {hh.IDENTICAL_RESPONSES: 1}
    assert metrics["train"]["pairs"] == 19 and metrics["test"]["pairs"] == 10
    table = pq.read_table(tmp_path / "raw" / "train.parquet")
    chosen, rejected = table.column("chosen").to_pylist(), table.column("rejected").to_pylist()
    assert all(c.strip() != r.strip() for c, r in zip(chosen, rejected))


def test_a_split_of_identical_responses_fails_naming_the_reason(tmp_path, out, capsys):
    folder = tmp_path / "hh" / "helpful-base"
    same = [pair(i, " Same.", " Same.") for i in range(8)]
    write_split(folder, "train.jsonl", same + [pair(50), pair(51)])
    write_split(folder, "test.jsonl", [pair(i) for i in range(100, 110)])
    line = fail(dir_cfg(tmp_path / "hh"), out, tmp_path / "m.json", capsys)
    assert "identical_responses 8" in line and "train.jsonl" in line


# 2. A split dropping more than data.max_drop_fraction is an error unless the user raises the knob.


def test_a_split_dropping_too_much_names_split_fraction_reasons_and_knob(tmp_path, out, capsys):
    folder = tmp_path / "hh" / "helpful-base"
    records = [pair(i) for i in range(10)] + [mismatched(i) for i in range(20, 23)] + [b"{not json"]
    write_split(folder, "train.jsonl.gz", records)
    write_split(folder, "test.jsonl.gz", [pair(i) for i in range(100, 110)])
    line = fail(dir_cfg(tmp_path / "hh"), out, tmp_path / "m.json", capsys)
    assert "the train split from " + str(folder / "train.jsonl.gz") in line
    assert "dropped 28.6% of its 14 records" in line  # 4 of 14
    assert "top reasons: prompt_mismatch 3, not_json 1" in line
    assert "data.max_drop_fraction=0.1" in line

    # Raised, the same input passes, and the drops are counted.
    cfg = dir_cfg(tmp_path / "hh", max_drop_fraction=0.3)
    metrics = download(cfg, seed=0, out_dir=out, metrics_path=tmp_path / "m.json")
    assert metrics["train"]["dropped"] == {hh.NOT_JSON: 1, hh.PROMPT_MISMATCH: 3}
    assert metrics["train"]["drop_fraction"] == round(4 / 14, 4) and metrics["train"]["pairs"] == 10


def test_the_default_threshold_passes_the_synthetic_default(tmp_path):
    metrics = download(DataConfig(), 1337, tmp_path / "raw", tmp_path / "m.json")
    for split in ("train", "test"):
        assert metrics[split]["drop_fraction"] <= DataConfig().max_drop_fraction
        assert metrics[split]["pairs"] > 0


def test_max_drop_fraction_is_a_fraction():
    assert parse_params({"data": {"max_drop_fraction": 1.0}}).data.max_drop_fraction == 1.0
    with pytest.raises(ParamsError, match=r"data\.max_drop_fraction: 1\.5: Input should be less than or eq"):
        parse_params({"data": {"max_drop_fraction": 1.5}})


# 3. A folder missing a split: the carve names the missing file, and train is always the larger side.


@pytest.mark.parametrize(("have", "missing"), [("test", "train"), ("train", "test")])
def test_a_missing_split_is_carved_leaving_train_the_larger_side(tmp_path, have, missing):
    folder = tmp_path / "hh" / "helpful-base"
    write_split(folder, f"{have}.jsonl.gz", [pair(i) for i in range(20)])
    cfg = dir_cfg(tmp_path / "hh")
    metrics = download(cfg, seed=3, out_dir=tmp_path / "raw", metrics_path=tmp_path / "m.json")
    carved = metrics["carved"]
    assert carved["from"] == have and carved["file"] == str(folder / f"{have}.jsonl.gz")
    assert carved["missing"] == f"{folder / missing}.jsonl(.gz)"
    assert (carved["train"], carved["test"]) == (18, 2)  # split_fraction 0.1 of 20 becomes test
    assert (metrics["train"]["pairs"], metrics["test"]["pairs"]) == (18, 2)
    note = f"{folder / missing}.jsonl(.gz) is missing: carving {missing} from {have}.jsonl.gz"
    assert note in carved["note"]
    assert "data.split_fraction=0.1" in carved["note"]


def test_a_carve_leaving_train_empty_names_the_missing_file(tmp_path, out, capsys):
    folder = tmp_path / "hh" / "helpful-base"
    write_split(folder, "test.jsonl", [pair(0)])  # one record: the carve keeps it as test
    line = fail(dir_cfg(tmp_path / "hh"), out, tmp_path / "m.json", capsys)
    assert "the train split" in line and "no parseable pair" in line
    assert f"{folder / 'train'}.jsonl(.gz) is missing: carving train from test.jsonl" in line
    assert "data.split_fraction=0.1" in line


def test_a_carved_split_that_drops_too_much_names_the_carve(tmp_path, out, capsys):
    folder = tmp_path / "hh" / "helpful-base"
    records = [pair(i) for i in range(10)] + [mismatched(i) for i in range(20, 30)]
    write_split(folder, "train.jsonl", records)
    line = fail(dir_cfg(tmp_path / "hh"), out, tmp_path / "m.json", capsys)
    assert "data.max_drop_fraction=0.1" in line and "prompt_mismatch" in line
    assert f"{folder / 'test'}.jsonl(.gz) is missing: carving test from train.jsonl" in line


def test_split_fraction_must_leave_train_the_larger_side():
    with pytest.raises(ParamsError, match=r"data\.split_fraction: 0\.5: Input should be less than 0\.5"):
        parse_params({"data": {"split_fraction": 0.5}})


# 4. data.division is a folder name, never a path.


@pytest.mark.parametrize("division", ["../../../../etc", "a/b", "/etc", "a\\b", "..", ".", "", "héllo"])
def test_division_must_be_a_folder_name(division):
    with pytest.raises(ParamsError) as err:
        parse_params({"data": {"source": "dir", "dir": "/data/hh", "division": division}})
    message = str(err.value)
    assert f"data.division: {division!r} is not a folder name" in message
    assert "letters, digits, '-', '_' and '.'" in message and "\n" not in message


@pytest.mark.parametrize("division", ["helpful-base", "harmless-base", "helpful_rs.v2"])
def test_hub_division_names_are_accepted(division):
    assert parse_params({"data": {"division": division}}).data.division == division


def test_a_path_as_division_fails_the_stage_before_writing(tmp_path, out, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text("data:\n  source: dir\n  dir: /tmp\n  division: ../../../../etc\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        run_or_exit(lambda: download_stage.main(out, tmp_path / "m.json"))
    assert exit_.value.code == 1
    assert "data.division: '../../../../etc' is not a folder name" in capsys.readouterr().err
    assert (out / "train.parquet").read_bytes() == SENTINEL and not (tmp_path / "m.json").exists()


# 5. data.source: hf without a reachable hub fails in seconds, one line, no retries, nothing written.


def test_unreachable_hub_fails_fast_in_one_line(tmp_path, out, monkeypatch, capfd):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # a closed port, anywhere
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    started = time.monotonic()
    with pytest.raises(SourceUnreachable) as err:
        download(DataConfig(source="hf"), seed=0, out_dir=out, metrics_path=tmp_path / "m.json")
    assert time.monotonic() - started < 10
    assert isinstance(err.value, UserError)
    message = str(err.value)
    assert "\n" not in message and "http://127.0.0.1:9 is unreachable" in message
    assert "data.source=dir with data.dir=" in message and "data.source=synthetic" in message
    assert "Retry" not in "".join(capfd.readouterr())
    assert (out / "train.parquet").read_bytes() == SENTINEL and not (tmp_path / "m.json").exists()


def _hub_answers() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(_hub_answers(), reason="the hub is reachable here; this checks the offline path")
def test_offline_hub_source_fails_in_seconds(tmp_path, out, monkeypatch, capfd):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the real endpoint, really unreachable
    started = time.monotonic()
    with pytest.raises(SystemExit):
        run_or_exit(lambda: download(DataConfig(source="hf"), 0, out, tmp_path / "m.json"))
    assert time.monotonic() - started < 10
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "huggingface.co is unreachable" in captured.err and "data.source=dir" in captured.err
    assert (out / "train.parquet").read_bytes() == SENTINEL and not (tmp_path / "m.json").exists()


# filter.keep and the batch sizes against the data, as soon as its size is known: in params for
# generated data, in the download stage for a folder (not after base, reward and score have run).


def test_keep_larger_than_the_synthetic_data_fails_in_params():
    with pytest.raises(ParamsError, match=r"^params: filter\.keep: 4001 exceeds the 4000 synthetic train pairs"):
        parse_params({"filter": {"keep": 4001}})
    with pytest.raises(ParamsError, match=r"filter\.keep: 600 exceeds the 500 synthetic"):
        parse_params({"filter": {"keep": 600}, "data": {"max_pairs": 500}})
    assert parse_params({"filter": {"keep": 4000}}).filter.keep == 4000  # the boundary is allowed
    assert parse_params({"filter": {"keep": 9000}, "data": {"source": "dir", "dir": "/x"}}).filter.keep == 9000


@pytest.mark.parametrize("sections, says", [
    ({"reward": {"batch_size": 41, "micro_batch_size": 41}}, "reward.batch_size: 41 exceeds the 40 synthetic train pairs"),
    ({"dpo": {"batch_size": 41, "micro_batch_size": 41}}, "dpo.batch_size: 41 exceeds the 40 synthetic train pairs"),
    ({"filter": {"keep": 8}}, "train.batch_size: 16 exceeds the 8 pairs SFT trains on (filter.keep"),
    ({"base": {"batch_size": 81, "micro_batch_size": 81}}, "base.batch_size: 81 exceeds the 80 train dialogues"),
    ({"scaling": {"batch_size": 81}}, "scaling.batch_size: 81 exceeds the 80 train dialogues"),
])
def test_a_batch_larger_than_the_data_it_draws_from_fails_in_params(sections, says):
    small = {"data": {"synthetic": {"n_train": 40}}}
    with pytest.raises(ParamsError, match="^params: " + says.replace(".", "\\.").replace("(", "\\(")):
        parse_params({**small, **sections})
    parse_params(small)  # 16 per batch fits 40 pairs; base and scaling draw on both responses (80)
    parse_params({**small, "base": {"batch_size": 80, "micro_batch_size": 80}, "filter": {"keep": 16}})


def test_a_batch_larger_than_a_folders_train_split_fails_the_download_before_writing(tmp_path, out, capsys):
    folder = tmp_path / "hh" / "helpful-base"
    write_split(folder, "train.jsonl", [pair(i) for i in range(12)])
    write_split(folder, "test.jsonl", [pair(i) for i in range(100, 110)])
    params = dir_params(tmp_path / "hh")
    with pytest.raises(SystemExit):
        run_or_exit(lambda: download_stage.run(params.data, 0, out, tmp_path / "m.json", params))
    assert capsys.readouterr().err == ("error: reward.batch_size: 16 exceeds the 12 train pairs read; lower "
                                       "reward.batch_size (and micro_batch_size) to at most 12, or use more data\n")
    assert (out / "train.parquet").read_bytes() == SENTINEL and not (tmp_path / "m.json").exists()


def test_keep_larger_than_a_folders_train_split_fails_the_download_before_writing(tmp_path, out, capsys):
    folder = tmp_path / "hh" / "helpful-base"
    write_split(folder, "train.jsonl", [pair(i) for i in range(20)])
    write_split(folder, "test.jsonl", [pair(i) for i in range(100, 110)])
    too_many, fits = dir_params(tmp_path / "hh", keep=21), dir_params(tmp_path / "hh", keep=20)
    with pytest.raises(SystemExit):
        run_or_exit(lambda: download_stage.run(too_many.data, 0, out, tmp_path / "m.json", too_many))
    assert capsys.readouterr().err == "error: filter.keep: 21 exceeds the 20 train pairs read; use at most 20 or null\n"
    assert (out / "train.parquet").read_bytes() == SENTINEL and not (tmp_path / "m.json").exists()
    download_stage.run(fits.data, 0, out, tmp_path / "m.json", fits)  # the boundary
    assert pq.read_table(out / "train.parquet").num_rows == 20
