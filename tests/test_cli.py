import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPTPIPE = str(Path(sys.executable).parent / "gptpipe")


def gptpipe(*args: str, cwd: Path, offline: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if offline:  # the hub is unreachable on these machines; make it certain (and fast) anywhere
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([GPTPIPE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_help_lists_the_commands():
    out = gptpipe("--help", cwd=REPO).stdout
    for command in ("repro", "check", "preset", "download", "tokenize", "base", "sft", "bench"):
        assert command in out


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
