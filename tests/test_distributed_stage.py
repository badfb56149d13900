"""shared.processes: a training stage started as DVC starts it relaunches itself under torchrun,
and the run equals the single-process one (gloo on two CPU processes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _base_stage(tiny_params, tokenized, root: Path, processes: int, micro: int = 4) -> subprocess.CompletedProcess:
    root.mkdir()
    params = tiny_params.model_dump(mode="json")
    params["shared"].update(device="cpu", processes=processes)
    params["base"].update(micro_batch_size=micro)  # batch 8: two micro-batches a step, one per rank
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "stages.base", "--tokenized", str(tokenized), "--out", "model",
               "--metrics", "base.json", "--plots", "plots", "--checkpoints", "ckpt"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_from_the_stage_command_give_the_single_process_run(tiny_params, tokenized, tmp_path):
    single = _base_stage(tiny_params, tokenized, tmp_path / "one", 1)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = _base_stage(tiny_params, tokenized, tmp_path / "two", 2)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "shared.processes=2: -m torch.distributed.run --standalone --nproc_per_node=2 -m stages.base" in ddp.stderr
    a, b = (json.loads((tmp_path / n / "base.json").read_text()) for n in ("one", "two"))
    assert a["steps"] == b["steps"] and a["tokens"] == b["tokens"]
    # AdamW: float noise in a zero-in-exact-arithmetic gradient can move a weight a little (see the
    # accumulation test), so the losses agree closely, not bit for bit.
    assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-3)
    assert "shared.processes" not in single.stderr


def test_processes_that_cannot_share_a_step_fail_in_one_line(tiny_params, tokenized, tmp_path):
    result = _base_stage(tiny_params, tokenized, tmp_path / "bad", 2, micro=8)
    assert result.returncode != 0
    assert "cannot be shared by 2 DDP processes" in result.stderr
