"""End to end through the real DVC commands, in a temporary git repo holding this project with the
tiny params: repro, a no-op repro, an experiment on one knob, metrics and plots diffs, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dvc_project import run

TRAINING_FILES = ["metrics/sft.json", "metrics/base.json", "plots/sft/loss.tsv", "plots/sft/loss.png",
                  "plots/sft/memory.png", "plots/base/loss.tsv"]


@pytest.fixture
def project(repro_project: Path) -> Path:
    return repro_project


def test_repro_writes_the_promised_metrics_and_plots(project):
    scaling = ["metrics/scaling.json", "plots/scaling/compute_optimal.md", "plots/scaling/isoflop.png"]
    later = ["metrics/reward.json", "metrics/score.json", "metrics/filter.json", "metrics/dpo.json",
             "metrics/evaluate.json", "plots/evaluate/report.md", "plots/evaluate/rewards.png",
             "data/generated/sft.jsonl", "data/judged/dpo.parquet", "report/index.html"]
    for name in TRAINING_FILES + scaling + later + ["metrics/data.json", "metrics/tokenizer.json", "metrics/tokenize.json"]:
        assert (project / name).is_file(), name
    sft = json.loads((project / "metrics/sft.json").read_text())
    assert sft["test_loss"] < json.loads((project / "metrics/base.json").read_text())["test_loss"] + 5
    assert {"tokens_per_s", "mfu", "memory", "flops"} <= set(sft)
    assert {"parameters_bytes", "gradients_bytes", "optimizer_state_bytes", "rest_bytes"} <= set(sft["memory"])
    assert (project / "models/sft/model.safetensors").is_file()
    shown = json.loads(run(project, "dvc", "metrics", "show", "--json").stdout)
    assert "metrics/sft.json" in json.dumps(shown)


def test_second_repro_runs_nothing(project):
    again = run(project, "dvc", "repro")
    assert "Running stage" not in again.stdout
    assert run(project, "git", "status", "--porcelain").stdout == ""


def test_experiment_on_the_optimizer_reruns_only_sft_and_shows_in_diffs(project):
    exp = run(project, "dvc", "exp", "run", "-n", "sgd", "-S", "train.optimizer=sgd")
    assert "Running stage 'sft'" in exp.stdout
    for stage in ("download", "tokenize", "base", "reward", "score", "filter", "scaling", "generate@base"):
        assert f"Running stage '{stage}'" not in exp.stdout
    for stage in ("dpo", "generate@sft", "judge@dpo", "evaluate"):  # downstream of sft
        assert f"Running stage '{stage}'" in exp.stdout
    diff = json.loads(run(project, "dvc", "metrics", "diff", "--json").stdout)
    sft = diff["metrics/sft.json"]
    assert sft["optimizer"]["old"] == "adamw" and sft["optimizer"]["new"] == "sgd"
    assert sft["test_loss"]["old"] != sft["test_loss"]["new"]
    assert "metrics/base.json" not in diff or "test_loss" not in diff["metrics/base.json"]
    shown = run(project, "dvc", "exp", "show", "--json").stdout
    assert '"sgd"' in shown
    plots = run(project, "dvc", "plots", "diff", "HEAD", "--json").stdout
    assert "sft_train_vs_test" in plots and "workspace" in plots
    reset(project)


def test_dpo_beta_experiment_reruns_only_dpo_and_its_answers(project):
    exp = run(project, "dvc", "exp", "run", "-n", "beta", "-S", "dpo.beta=0.5")
    for stage in ("dpo", "generate@dpo"):
        assert f"Running stage '{stage}'" in exp.stdout
    for stage in ("sft", "generate@sft", "judge@sft", "generate@base", "reward"):
        assert f"Running stage '{stage}'" not in exp.stdout
    # judge@dpo and evaluate rerun only if the new model's answers differ: on the tiny model's few
    # short answers they may not, and DVC then rightly skips them (the default shows the change).
    diff = json.loads(run(project, "dvc", "metrics", "diff", "--json").stdout)
    dpo = diff["metrics/dpo.json"]
    assert (dpo["beta"]["old"], dpo["beta"]["new"]) == (0.3, 0.5)
    assert dpo["test_margin"]["old"] != dpo["test_margin"]["new"]  # implicit rewards scale with beta
    assert "models.sft.mean_reward" not in diff.get("metrics/evaluate.json", {})  # same SFT answers, same judge
    reset(project)


def test_a_trained_tokenizer_reruns_the_tokenizer_and_everything_after_and_nothing_before(project):
    # Run up to the four models (what the assertions below read); the stages after them are left for
    # `dvc status` to name: DVC would rerun each, because an input it reads has changed.
    exp = run(project, "dvc", "exp", "run", "-n", "bpe", "-S", "tokenize.tokenizer=trained", "-S", "tokenize.vocab_size=400",
              "dpo", "reward")
    assert "Running stage 'download'" not in exp.stdout
    for stage in ("tokenizer", "tokenize", "base", "reward", "score", "filter", "sft", "dpo"):
        assert f"Running stage '{stage}'" in exp.stdout, stage
    stale = json.loads(run(project, "dvc", "status", "--json").stdout)
    assert {"scaling", "generate@base", "generate@sft", "generate@dpo", "judge@sft", "evaluate", "report"} <= set(stale)
    assert not {"download", "tokenizer", "tokenize", "base", "sft", "dpo"} & set(stale)
    record = json.loads((project / "metrics/tokenizer.json").read_text())
    assert record["tokenizer"] == "trained" and record["vocab_size"] == 400
    # Every model carries the tokenizer it was trained with, and its vocabulary is that tokenizer's.
    for model in ("base", "sft", "dpo", "reward"):
        folder = project / "models" / model
        assert (folder / "tokenizer.json").read_bytes() == (project / "data/tokenizer/tokenizer.json").read_bytes()
        assert json.loads((folder / "config.json").read_text())["vocab_size"] == 400, model
    sft = json.loads((project / "metrics/sft.json").read_text())
    assert 0 < sft["test_bpb"] < 20 and "test_bpb" in (project / "plots/sft/loss.tsv").read_text().splitlines()[0]
    reset(project)


def test_each_subset_size_reruns_the_filter(project):
    # Regression: with a param named `size` DVC's run-cache restored the first subset for every
    # later size (treeverse/dvc#10296). Two sizes in a row must each run and keep their own N.
    pairs = json.loads((project / "metrics/data.json").read_text())["train"]["pairs"]
    for keep in (pairs // 2, pairs // 4):
        exp = run(project, "dvc", "exp", "run", "-S", f"filter.keep={keep}", "filter")
        assert "Running stage 'filter'" in exp.stdout
        assert json.loads((project / "metrics/filter.json").read_text())["kept"] == keep
    reset(project)


def test_report_page_has_every_pipeline_section(project):
    page = (project / "report" / "index.html").read_text()
    for title in ("Training curves", "Reward model", "DPO", "compute-optimal"):
        assert title in page, title
    record = json.loads((project / "metrics" / "report.json").read_text())
    assert {"reward", "dpo", "evaluate"} <= set(record["present"])


def test_the_hub_judge_runs_through_dvc_to_the_report(project, tiny_classifier):
    # The full study's judge path (reward.backend: hf) with a local classifier of the hub model's
    # class (DeBERTa-v2): every stage after it runs and the report is built.
    result = run(project, "dvc", "exp", "run", "-S", "reward.backend=hf", "-S", f"reward.name={tiny_classifier}")
    # Every stage downstream of the judge reruns. (sft and dpo keep their outputs: with filter.keep
    # null the subset is every train pair whichever judge scored them, so their inputs are unchanged.)
    for stage in ("reward", "score", "filter", "judge@base", "judge@sft", "judge@dpo", "evaluate", "report"):
        assert f"Running stage '{stage}'" in result.stdout, stage
    reward = json.loads((project / "metrics/reward.json").read_text())
    assert reward["backend"] == "hf" and 0 <= reward["test_accuracy"] <= 1
    assert (project / "plots/reward/loss.tsv").read_text().startswith("step\t")
    assert json.loads((project / "metrics/score.json").read_text())["scorer"] == str(tiny_classifier)
    assert (project / "report/index.html").is_file()
    reset(project)


def test_bad_param_fails_in_one_line_and_one_command_brings_back_the_last_good_outputs(project):
    result = run(project, "dvc", "exp", "run", "-S", "train.optimizer=bogus", ok=False)
    assert result.returncode != 0
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error and "train.optimizer: 'bogus'" in error[0] and "'adamw'" in error[0]
    assert (project / "models/base/model.safetensors").is_file()
    assert (project / "data/tokenized/train.arrow").is_file()
    # DVC deleted the first changed stage's outputs before its command refused the params; the line
    # names that stage, and the named command brings the workspace back to the committed run.
    stage = re.search(r"`gptpipe restore (\S+)`", error[0]).group(1)
    run(project, "git", "checkout", "--", "params.yaml")
    run(project, "gptpipe", "restore", stage)
    assert "up to date" in run(project, "dvc", "status").stdout


def test_bad_data_file_fails_in_one_line_and_one_command_brings_back_the_last_good_outputs(project, tmp_path):
    good = {name: (project / name).read_bytes() for name in ("data/raw/train.parquet", "metrics/data.json")}
    folder = tmp_path / "hh" / "helpful-base"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("<html>not the data</html>\n")
    (folder / "test.jsonl").write_text("<html>not the data</html>\n")
    result = run(project, "dvc", "exp", "run", "-S", "data.source=dir", "-S", f"data.dir={tmp_path / 'hh'}", ok=False)
    assert result.returncode != 0
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error and "not JSON Lines" in error[0]
    assert (project / "models/base/model.safetensors").is_file()
    # DVC deleted the failed stage's outputs before running it, its cache: false metrics too, which
    # `dvc checkout` does not bring back; the error names the command that does.
    assert "`gptpipe restore download`" in error[0] and not any((project / name).exists() for name in good)
    restored = run(project, "gptpipe", "restore", "download")
    assert "metrics/data.json from the DVC cache" in restored.stdout
    assert {name: (project / name).read_bytes() for name in good} == good
    reset(project)


def reset(project: Path) -> None:
    """The shared project back to its committed run: params and dvc.lock from git, every output
    (cache: false metrics and plots too) from the DVC cache."""
    run(project, "git", "checkout", "--", ".")
    run(project, "gptpipe", "restore")


def test_restore_names_the_stages_it_knows(project):
    result = run(project, "gptpipe", "restore", "bogus", ok=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "bogus: not a stage with a last good run in dvc.lock (stages: download, tokenize" in result.stderr
