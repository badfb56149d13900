import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gptpipe import cli
from gptpipe.cli import app
from gptpipe.config import load_params

REPO = Path(__file__).resolve().parents[1]
GPTPIPE = str(Path(sys.executable).parent / "gptpipe")
STAGES = ("download", "tokenizer", "tokenize", "base", "reward", "score", "filter", "sft", "dpo", "generate", "judge",
          "evaluate", "scaling", "report")


def gptpipe(*args: str, cwd: Path, offline: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if offline:  # the hub is unreachable on these machines; make it certain (and fast) anywhere
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([GPTPIPE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    commands = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("│ ") and len(line.split()) > 1}
    for command in ("repro", "check", "preset", "study", "chat", "bench", *STAGES):
        assert command in commands, command
    assert "dvc.lock is not updated" in result.stdout  # a stage command is not a recorded run


def test_every_dvc_stage_is_a_command():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert {name for name, _ in cli.STAGES} == set(stages) == set(STAGES)
    assert {name for name in stages if "foreach" in stages[name]} == set(cli.FOREACH_STAGES)
    help_text = invoke("sft", "--help").stdout
    assert "dvc repro sft" in help_text and "dvc.lock is not updated" in help_text


def python_writing(path: str, text: str) -> str:
    """A dvc.yaml cmd: `python -c ...` that writes text (and the interpreter that ran it) to path."""
    return f"python -c \"import pathlib, sys; pathlib.Path('{path}').write_text('{text} ' + sys.executable)\""


def write_dvc_yaml(folder: Path, stages: dict) -> None:
    (folder / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))


def test_a_stage_command_runs_the_cmd_dvc_yaml_gives_with_this_python(tmp_path, monkeypatch):
    write_dvc_yaml(tmp_path, {
        "sft": {"cmd": python_writing("out/sft.txt", "ran sft"), "deps": ["x"]},
        "dpo": {"cmd": "python -c \"raise SystemExit(3)\""},
    })
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "")  # no `python` to find: the leading python must become sys.executable

    result = invoke("sft")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "sft.txt").read_text() == f"ran sft {sys.executable}"
    assert invoke("dpo").exit_code == 3  # the stage's own exit status


def test_a_foreach_stage_runs_each_model_or_the_one_named(tmp_path, monkeypatch):
    write_dvc_yaml(tmp_path, {"generate": {
        "foreach": "${generate.models}",
        "do": {"cmd": python_writing("${item}.txt", "answers of ${item}"), "outs": ["${item}.txt"]},
    }})
    (tmp_path / "params.yaml").write_text("generate:\n  models: [base, sft]\n")
    monkeypatch.chdir(tmp_path)

    assert invoke("generate").exit_code == 0  # default: every model in generate.models
    assert sorted(p.name for p in tmp_path.glob("*.txt")) == ["base.txt", "sft.txt"]
    assert (tmp_path / "sft.txt").read_text() == f"answers of sft {sys.executable}"

    for path in tmp_path.glob("*.txt"):
        path.unlink()
    assert invoke("generate", "sft").exit_code == 0
    assert [p.name for p in tmp_path.glob("*.txt")] == ["sft.txt"]

    result = invoke("generate", "dpo")  # not one of generate.models: DVC has no generate@dpo either
    assert result.exit_code == 1 and "'dpo' is not one of its items (base, sft)" in result.stderr
    assert not (tmp_path / "dpo.txt").exists()


def test_a_stage_command_outside_the_project_root_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("tokenize")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no dvc.yaml here") and "project root" in lines[0]


PARAMS = """\
# The embedded default, cut down: a comment above everything.

shared:                 # read by every stage
  seed: 1337            # one seed for everything
  device: auto          # auto | cpu | cuda

data:
  source: synthetic     # synthetic | dir | hf
  dir: null             # absolute folder (source: dir)

train:                  # supervised fine-tuning
  lr: null              # null = the optimizer's default
  max_steps: 150
  lora:                 # LoRA of the sft stage
    rank: 0             # 0 = full fine-tuning
    targets: [attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj]

reward:
  hf_max_length: 512    # hf: truncation

score:
  batch_size: 32        # sequences per scoring pass

scaling:                # a comment on a section
  models: [1x16, 1x32, 2x64, 2x128]  # shapes
  budgets: [3.0e+11, 1.0e+12, 2.0e+12]  # FLOPs
"""
PRESET = """\
# A preset's own comments stay in the preset.
shared:
  device: cuda          # a preset comment
train:
  lr: 1.0e-05
  lora:
    rank: 8
score:
  batch_size: 64
scaling:
  models: [gpt2, gpt2-medium, gpt2-large]
model:                  # a section params.yaml does not list
  init: pretrained
"""
CHANGED_KEYS = ("device:", "lr:", "rank:", "batch_size:", "models:")


@pytest.fixture
def presets(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "demo.yaml").write_text(PRESET)
    (folder / "nothing.yaml").write_text("# sets nothing\n")
    (folder / "bad.yaml").write_text("train:\n  optimizer: lion\n")
    monkeypatch.setattr(cli, "PRESETS", folder)
    return folder


def test_a_preset_keeps_params_yaml_comments_and_layout(tmp_path, presets):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    result = invoke("preset", "demo", "--params", str(params))
    assert result.exit_code == 0, result.output
    text = params.read_text()

    for line in PARAMS.splitlines():
        if not line.strip().startswith(CHANGED_KEYS):
            assert line in text.splitlines(), line  # untouched lines stay byte for byte
        if "#" in line:
            assert line[line.index("#"):] in text  # every comment, changed keys' included
    assert "a preset comment" not in text and "A preset's own comments" not in text
    assert "  device: cuda          # auto | cpu | cuda" in text.splitlines()  # the value, in its place
    assert "  models: [gpt2, gpt2-medium, gpt2-large] # shapes" in text.splitlines()  # still a flow list
    assert "  dir: null             # absolute folder (source: dir)" in text.splitlines()

    merged = load_params(params)  # the result validates, with the preset's values
    assert (merged.shared.device, merged.train.lr, merged.train.lora.rank) == ("cuda", 1e-5, 8)
    assert merged.score.batch_size == 64 and merged.scaling.models == ("gpt2", "gpt2-medium", "gpt2-large")
    assert merged.model.init == "pretrained"
    assert (merged.train.max_steps, merged.reward.hf_max_length, merged.train.lora.targets[0]) == (150, 512, "attn.c_attn")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "presets"]  # no temp file left


def test_a_preset_that_sets_nothing_leaves_params_yaml_byte_for_byte(tmp_path, presets):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    assert invoke("preset", "nothing", "--params", str(params)).exit_code == 0
    assert params.read_text() == PARAMS


def test_a_preset_that_does_not_validate_writes_nothing(tmp_path, presets):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    result = invoke("preset", "bad", "--params", str(params))
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "train.optimizer: 'lion'" in result.stderr
    assert params.read_text() == PARAMS


def test_every_repo_preset_applies_to_params_yaml_keeping_its_comments(tmp_path):
    original = (REPO / "params.yaml").read_text()
    comments = [line[line.index("#"):] for line in original.splitlines() if "#" in line]
    for preset in sorted((REPO / "presets").glob("*.yaml")):
        params = tmp_path / "params.yaml"
        params.write_text(original)
        result = invoke("preset", preset.stem, "--params", str(params))
        assert result.exit_code == 0, result.output
        text = params.read_text()
        assert [c for c in comments if c not in text] == []
        assert_holds(yaml.safe_load(text), yaml.safe_load(preset.read_text()), preset.name)
        load_params(params)  # validates


def assert_holds(merged: dict, values: dict, where: str) -> None:
    """Every value the preset sets is in the merged params, section by section."""
    for key, value in values.items():
        if isinstance(value, dict):
            assert_holds(merged[key], value, f"{where}: {key}")
        else:
            assert merged[key] == value, f"{where}: {key}"


def test_full_study_fails_fast_offline_naming_every_unreachable_asset(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_text()
    result = gptpipe("repro", "--preset", "full", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot start:")
    assert "Anthropic/hh-rlhf" in lines[0] and "data.source=dir" in lines[0]
    assert "model.name=gpt2" in lines[0] and "save_pretrained" in lines[0]
    assert "reward.name=OpenAssistant/reward-model-deberta-v3-large-v2" in lines[0]
    assert (tmp_path / "params.yaml").read_text() == before  # nothing applied, nothing run


def test_check_reports_a_bad_param_in_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  optimizer: lion\n")
    result = gptpipe("check", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "train.optimizer: 'lion'" in result.stderr


def test_unknown_preset_lists_the_known_ones(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    result = gptpipe("preset", "huge", cwd=tmp_path)
    assert result.returncode == 1 and "known presets: full" in result.stderr
