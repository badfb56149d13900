"""A copy of this project in a fresh git repo, and the commands tests run in it as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tiny import TINY

REPO = Path(__file__).resolve().parents[1]
ALL_STAGES = ("download", "tokenizer", "tokenize", "base", "reward", "score", "filter", "sft", "dpo",
              "generate@base", "generate@sft", "generate@dpo", "judge@base", "judge@sft", "judge@dpo",
              "evaluate", "scaling", "report")


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


def merge(base: dict, overlay: dict) -> dict:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def tiny_repro(root: Path) -> Path:
    """This project's tracked files in a fresh git repo, with the tiny params, after `dvc repro`."""
    copy_tracked(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(merge(params, TINY), sort_keys=False))
    run(root, "git", "init", "-q", "-b", "main")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "tiny project")
    repro = run(root, "dvc", "repro")
    for stage in ALL_STAGES:
        assert f"Running stage '{stage}'" in repro.stdout, stage
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "tiny run")
    return root
