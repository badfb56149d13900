"""A fresh run reproduces the committed results: the data stages' outputs hash to what the committed
dvc.lock records, and a short training run gives the losses it gave when this file was written.

The whole default `dvc repro` (20 minutes) is too long for every commit; these are the cheap parts
that break first when an install drifts (a tokenizer, a generator, a kernel or an init that changed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stage_runs import run_base
from dvc_project import copy_tracked, run

REPO = Path(__file__).resolve().parents[1]


def _outs(lock: dict, stage: str) -> dict[str, str]:
    """The stage's data outputs (its metrics file also records a wall-clock speed)."""
    return {out["path"]: out["md5"] for out in lock["stages"][stage]["outs"] if out["path"].startswith("data/")}


def test_the_data_stages_reproduce_the_committed_lock(tmp_path):
    copy_tracked(tmp_path)
    run(tmp_path, "git", "init", "-q", "-b", "main")
    run(tmp_path, "git", "add", "-A")
    run(tmp_path, "git", "commit", "-qm", "fresh clone")
    run(tmp_path, "dvc", "repro", "--force", "tokenize")  # download, tokenizer and tokenize, whatever the lock says
    committed = yaml.safe_load((REPO / "dvc.lock").read_text())
    fresh = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    for stage in ("download", "tokenizer", "tokenize"):
        assert _outs(fresh, stage) and _outs(fresh, stage) == _outs(committed, stage), stage


# Final losses of the tiny base run below, on the locked install (torch 2.13.0 CPU, 2 threads).
GOLDEN_BASE = {"train_loss": 7.224488843388918, "test_loss": 7.3481849022160945}


def test_a_short_training_run_gives_the_recorded_losses(tiny_params, tokenized, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its checkpoints stay in the temp folder
    metrics = run_base(tiny_params, tokenized, tmp_path / "base", tmp_path / "base.json", tmp_path / "plots")
    got = {key: metrics[key] for key in GOLDEN_BASE}
    assert got == pytest.approx(GOLDEN_BASE, rel=1e-6, abs=0)
