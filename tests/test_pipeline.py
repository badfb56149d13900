"""End to end through the real DVC commands, in a temporary git repo holding this project with the
tiny params: repro, a no-op repro, an experiment on one knob, metrics and plots diffs, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiny import TINY

REPO = Path(__file__).resolve().parents[1]
ALL_STAGES = ("download", "tokenize", "base", "reward", "score", "filter", "sft", "dpo",
              "generate@base", "generate@sft", "generate@dpo", "judge@base", "judge@sft", "judge@dpo",
              "evaluate", "scaling", "report")
TRAINING_FILES = ["metrics/sft.json", "metrics/base.json", "plots/sft/loss.tsv", "plots/sft/loss.png",
                  "plots/sft/memory.png", "plots/base/loss.tsv"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` in dvc.yaml
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return env


def run(project: Path, *cmd: str, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=project, env=_env(), capture_output=True, text=True, timeout=1200)
    if ok and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def copy_tracked(root: Path) -> None:
    """This project's tracked files (as a fresh clone has them, without git history) under root."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)


def _merge(base: dict, overlay: dict) -> dict:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """This project's tracked files in a fresh git repo, with the tiny params, after `dvc repro`."""
    root = tmp_path_factory.mktemp("project")
    copy_tracked(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(_merge(params, TINY), sort_keys=False))
    run(root, "git", "init", "-q", "-b", "main")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "tiny project")
    repro = run(root, "dvc", "repro")
    for stage in ALL_STAGES:
        assert f"Running stage '{stage}'" in repro.stdout, stage
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "tiny run")
    return root


def test_repro_writes_the_promised_metrics_and_plots(project):
    scaling = ["metrics/scaling.json", "plots/scaling/compute_optimal.md", "plots/scaling/isoflop.png"]
    later = ["metrics/reward.json", "metrics/score.json", "metrics/filter.json", "metrics/dpo.json",
             "metrics/evaluate.json", "plots/evaluate/report.md", "plots/evaluate/rewards.png",
             "data/generated/sft.jsonl", "data/judged/dpo.parquet", "report/index.html"]
    for name in TRAINING_FILES + scaling + later + ["metrics/data.json", "metrics/tokenize.json"]:
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
    run(project, "git", "checkout", "--", "params.yaml")
    run(project, "dvc", "checkout", "-f")


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
    run(project, "git", "checkout", "--", "params.yaml")
    run(project, "dvc", "checkout", "-f")


def test_each_subset_size_reruns_the_filter(project):
    # Regression: with a param named `size` DVC's run-cache restored the first subset for every
    # later size (treeverse/dvc#10296). Two sizes in a row must each run and keep their own N.
    pairs = json.loads((project / "metrics/data.json").read_text())["train"]["pairs"]
    for keep in (pairs // 2, pairs // 4):
        exp = run(project, "dvc", "exp", "run", "-S", f"filter.keep={keep}", "filter")
        assert "Running stage 'filter'" in exp.stdout
        assert json.loads((project / "metrics/filter.json").read_text())["kept"] == keep
    run(project, "git", "checkout", "--", "params.yaml")
    run(project, "dvc", "checkout", "-f")


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
    run(project, "git", "checkout", "--", ".")
    run(project, "dvc", "checkout", "-f")


def test_bad_param_fails_in_one_line_and_keeps_earlier_outputs(project):
    result = run(project, "dvc", "exp", "run", "-S", "train.optimizer=bogus", ok=False)
    assert result.returncode != 0
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error and "train.optimizer: 'bogus'" in error[0] and "'adamw'" in error[0]
    assert (project / "models/base/model.safetensors").is_file()
    assert (project / "data/tokenized/train.arrow").is_file()
    run(project, "git", "checkout", "--", "params.yaml")
    run(project, "dvc", "checkout", "-f")


def test_bad_data_file_fails_in_one_line_and_keeps_later_stages_outputs(project, tmp_path):
    folder = tmp_path / "hh" / "helpful-base"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("<html>not the data</html>\n")
    (folder / "test.jsonl").write_text("<html>not the data</html>\n")
    result = run(project, "dvc", "exp", "run", "-S", "data.source=dir", "-S", f"data.dir={tmp_path / 'hh'}", ok=False)
    assert result.returncode != 0
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error and "not JSON Lines" in error[0]
    assert (project / "models/base/model.safetensors").is_file()
    # DVC deleted the failed stage's outputs before running it; the error says how to get them back.
    assert "`dvc checkout download`" in error[0] and not (project / "data/raw/train.parquet").exists()
    run(project, "dvc", "checkout", "download")
    assert (project / "data/raw/train.parquet").is_file()
    run(project, "git", "checkout", "--", "params.yaml")
    run(project, "dvc", "checkout", "-f")
