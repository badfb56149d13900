"""The fault suite: for every stage of dvc.yaml, a bad input and a kill during its run, through the
stage's real command (as dvc.lock records it) in a project that `dvc repro` has just built.

A bad input is one line on stderr naming the file and the way back (`gptpipe restore <stage>`), exit
status 1, and the stage's earlier outputs byte for byte as they were. A SIGKILL at the stage's first
rename (tests/killed_stage.py: a finished temp about to replace an output or a checkpoint) leaves
those outputs as they were too."""

from __future__ import annotations

import hashlib
import re
import runpy
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from dvc_project import ALL_STAGES, REPO

KILLER = REPO / "tests" / "killed_stage.py"
GARBAGE = b"<html>not what this file should hold</html>\n"
TEMP_SIBLING = re.compile(r"^\..+\.(tmp|old)-\d+$")  # gptpipe.files.atomic_path's

# stage -> the input file overwritten with GARBAGE (download's input is params: a folder that is not there)
BAD_INPUT = {
    "tokenizer": "data/raw/train.parquet",
    "tokenize": "data/raw/train.parquet",
    "base": "data/tokenized/train.arrow",
    "reward": "models/base/model.safetensors",
    "score": "models/reward/model.safetensors",
    "filter": "data/scored/train.parquet",
    "sft": "data/subsets/train.arrow",
    "dpo": "models/sft/model.safetensors",
    "generate@base": "models/base/config.json",
    "generate@sft": "data/raw/test.parquet",
    "generate@dpo": "models/dpo/model.safetensors",
    "judge@base": "data/generated/base.jsonl",
    "judge@sft": "models/reward/config.json",
    "judge@dpo": "data/generated/dpo.jsonl",
    "evaluate": "data/judged/sft.parquet",
    "scaling": "data/tokenized/test.arrow",
    "report": "metrics/evaluate.json",
}


def test_every_stage_has_a_bad_input_case():
    assert set(BAD_INPUT) | {"download"} == set(ALL_STAGES)


def _lock(project: Path) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]


def _command(project: Path, stage: str) -> list[str]:
    python, flag, module, *args = _lock(project)[stage]["cmd"].split()
    assert (python, flag) == ("python", "-m"), stage
    return [module, *args]


def _outputs(project: Path, stage: str) -> dict[str, str]:
    """sha256 of every file the stage's outputs hold as DVC sees them (files, and files under folders;
    a killed write's temp sibling is in .dvcignore and cleared by the next write)."""
    digests = {}
    for out in _lock(project)[stage]["outs"]:
        path = project / out["path"]
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if TEMP_SIBLING.match(file.name):
                continue
            digests[str(file.relative_to(project))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


def _run(project: Path, *argv: str) -> subprocess.CompletedProcess:
    # cwd first on sys.path (as `python -m` has it): the project's own stages and gptpipe
    env = {"PYTHONPATH": str(project), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    return subprocess.run([sys.executable, *argv], cwd=project, env=env, capture_output=True, text=True, timeout=600)


def _messages(stderr: str) -> list[str]:
    """stderr without progress bars (tqdm's carriage-return lines)."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line
            and "s/it]" not in line and "%|" not in line]


@contextmanager
def _replaced(path: Path, content: bytes) -> Iterator[None]:
    original = path.read_bytes()
    path.write_bytes(content)
    try:
        yield
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize("stage", ALL_STAGES)
def test_a_bad_input_is_one_line_and_the_stage_keeps_its_outputs(repro_project, stage, monkeypatch, capsys):
    project = repro_project
    before = _outputs(project, stage)
    if stage == "download":
        params = project / "params.yaml"
        raw = yaml.safe_load(params.read_text())
        raw["data"].update(source="dir", dir=str(project / "no-such-folder"))
        named, change = "no-such-folder", _replaced(params, yaml.safe_dump(raw, sort_keys=False).encode())
    else:
        named, change = BAD_INPUT[stage], _replaced(project / BAD_INPUT[stage], GARBAGE)
    # In this process (the stage's own entry point, as `python -m` runs it): a subprocess per case
    # would spend most of its time importing torch.
    module, *args = _command(project, stage)
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", [module, *args])
    monkeypatch.delitem(sys.modules, module, raising=False)  # runpy runs a fresh copy as __main__
    with change, pytest.raises(SystemExit) as exited:
        runpy.run_module(module, run_name="__main__", alter_sys=True)  # alter_sys: the stage knows its name
    messages = _messages(capsys.readouterr().err)
    assert exited.value.code == 1, (stage, messages)
    assert len(messages) == 1 and messages[0].startswith("error: "), (stage, messages)
    assert named in messages[0] or str(Path(named).parent) in messages[0], (stage, messages[0])
    assert messages[0].endswith(f"[the last good outputs: `gptpipe restore {stage}`]"), messages[0]
    assert _outputs(project, stage) == before


@pytest.mark.parametrize("stage", ALL_STAGES)
def test_a_kill_during_the_run_leaves_the_earlier_outputs(repro_project, stage):
    project = repro_project
    before = _outputs(project, stage)
    result = _run(project, str(KILLER), *_command(project, stage))
    assert result.returncode == -signal.SIGKILL, (stage, "ran to the end: an output written without a rename?",
                                                  result.stderr[-2000:])
    assert _outputs(project, stage) == before
    for left in _temp_siblings(project):  # what the next write would clear: the project as it was
        if left.is_dir():
            shutil.rmtree(left)
        else:
            left.unlink()


def _temp_siblings(project: Path) -> list[Path]:
    return [p for p in project.rglob(".*") if TEMP_SIBLING.match(p.name) and ".git" not in p.parts]
