"""SFT-only data (no rejected responses) through the real `dvc repro`: `gptpipe check` says what runs,
`dvc repro generate@sft` trains SFT on every assistant turn of ShareGPT conversations with no judge,
and the stages that learn from pairs or score answers refuse in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from dvc_project import copy_tracked, merge, run
from test_turns_mask import MARKERS, _counted_text
from tiny import TINY

from gptpipe.data.batches import lm_examples
from gptpipe.data.tokenizer import read_arrow


def _conversation(i: int) -> dict:
    a, b = i + 1, i % 5 + 2
    return {"conversations": [
        {"from": "human", "value": f"What is {a} plus {b}?"}, {"from": "gpt", "value": f"It is {a + b}."},
        {"from": "human", "value": "And doubled?"}, {"from": "gpt", "value": f"{2 * (a + b)}."},
    ]}


def _sharegpt_folder(root: Path) -> Path:
    folder = root / "chats" / "helpful-base"
    folder.mkdir(parents=True)
    for split, n in (("train", 48), ("test", 12)):
        records = [_conversation(i + (0 if split == "train" else 100)) for i in range(n)]
        records.append({"conversations": [{"from": "bot", "value": "?"}]})  # malformed: dropped and counted
        (folder / f"{split}.json").write_text(json.dumps(records))
    return root / "chats"


def _project(root: Path, data_dir: Path) -> Path:
    project = root / "project"
    copy_tracked(project)
    params = merge(yaml.safe_load((project / "params.yaml").read_text()), TINY)
    params = merge(params, {"data": {"source": "dir", "dir": str(data_dir), "max_drop_fraction": 0.1},
                            "reward": {"backend": "none"},  # train.loss_on stays auto
                            "generate": {"n_prompts": 6}})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(project, "git", "init", "-q", "-b", "main")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "sharegpt project")
    return project


def test_sharegpt_conversations_train_sft_alone_through_dvc_and_pair_stages_refuse(tmp_path):
    project = _project(tmp_path, _sharegpt_folder(tmp_path))
    check = run(project, "python", "-m", "gptpipe.cli", "check")
    assert "ok for SFT alone (data.format=sharegpt" in check.stdout and "`dvc repro generate@sft`" in check.stdout

    repro = run(project, "dvc", "repro", "generate@sft")
    for stage in ("download", "tokenize", "base", "reward", "score", "filter", "sft", "generate@sft"):
        assert f"Running stage '{stage}'" in repro.stdout, stage
    data = json.loads((project / "metrics/data.json").read_text())
    assert data["format"] == "sharegpt" and data["preference"] is False
    assert sum(data["train"]["dropped"].values()) == 1 and data["train"]["kept"] == 48  # the malformed one, counted

    # train.loss_on auto on conversations: every assistant turn is counted, each ending in the
    # "\n\nHuman:" that closes it; human turns are not.
    assert json.loads((project / "metrics/sft.json").read_text())["loss_on"] == "assistant_turns"
    train = read_arrow(project / "data/tokenized/train.arrow")
    assert train.column("rejected_ids").null_count == train.num_rows == 48
    first = lm_examples(train.slice(0, 1), "assistant_turns", ("chosen",), MARKERS)[0]
    assert _counted_text(first) == [" It is 3.\n\nHuman:", " 6.<|endoftext|>"]

    # No judge: nothing scored (null, not a made-up number), and SFT trains on every conversation.
    assert json.loads((project / "metrics/score.json").read_text())["train"]["pairwise_accuracy"] is None
    assert pq.read_table(project / "data/scored/train.parquet").column("chosen_reward").null_count == 48
    assert json.loads((project / "metrics/filter.json").read_text())["kept"] == 48
    curve = (project / "plots/sft/loss.tsv").read_text().splitlines()
    columns = curve[0].split("\t")
    test_loss = [float(line.split("\t")[columns.index("test_loss")]) for line in curve[1:]]
    assert test_loss[-1] < test_loss[0]  # SFT learned the conversations
    assert len((project / "data/generated/sft.jsonl").read_text().splitlines()) == 6

    for target, says in (("dpo", "have no rejected response"), ("judge@sft", "no judge to score answers")):
        refused = run(project, "dvc", "repro", target, ok=False)
        assert refused.returncode != 0
        lines = [line for line in (refused.stdout + refused.stderr).splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and says in lines[0] and "generate@sft" in lines[0], refused.stderr[-2000:]
