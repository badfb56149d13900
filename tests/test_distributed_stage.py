"""shared.processes: a training stage started as DVC starts it relaunches itself under torchrun,
and the run equals the single-process one (gloo on two CPU processes), replicated (DDP) or sharded
(FSDP)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import GPT2LMHeadModel

REPO = Path(__file__).resolve().parents[1]


def _base_stage(tiny_params, tokenized, root: Path, processes: int, micro: int = 4, strategy: str = "ddp",
                **base) -> subprocess.CompletedProcess:
    root.mkdir()
    params = tiny_params.model_dump(mode="json")
    params["shared"].update(device="cpu", processes=processes, strategy=strategy)
    params["base"].update(micro_batch_size=micro, **base)  # batch 8: two micro-batches a step, one per rank
    for section in ("train", "reward", "dpo"):  # every distributed stage's step is checked before any runs
        params[section].update(micro_batch_size=4)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "stages.base", "--tokenizer", str(tokenized.parent / "tokenizer"),
               "--tokenized", str(tokenized), "--out", "model",
               "--metrics", "base.json", "--plots", "plots", "--checkpoints", "ckpt"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def single(tiny_params, tokenized, tmp_path_factory) -> Path:
    """The single-process run both strategies are held to: its folder."""
    root = tmp_path_factory.mktemp("single") / "one"
    result = _base_stage(tiny_params, tokenized, root, 1)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "shared.processes" not in result.stderr
    return root


def test_two_processes_from_the_stage_command_give_the_single_process_run(tiny_params, tokenized, tmp_path, single):
    ddp = _base_stage(tiny_params, tokenized, tmp_path / "two", 2)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "shared.processes=2: -m torch.distributed.run --standalone --nproc_per_node=2 -m stages.base" in ddp.stderr
    a, b = (json.loads((root / "base.json").read_text()) for root in (single, tmp_path / "two"))
    assert a["steps"] == b["steps"] and a["tokens"] == b["tokens"]
    # AdamW: float noise in a zero-in-exact-arithmetic gradient can move a weight a little (see the
    # accumulation test), so the losses agree closely, not bit for bit.
    assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-3)


def test_processes_that_cannot_share_a_step_fail_before_torchrun_starts(tiny_params, tokenized, tmp_path):
    result = _base_stage(tiny_params, tokenized, tmp_path / "bad", 2, micro=8)
    assert result.returncode == 1
    assert "base.batch_size / base.micro_batch_size = 1 micro-batches per step cannot be shared by shared.processes=2" in result.stderr
    assert "torch.distributed.run" not in result.stderr  # refused before any process started


def test_sharded_processes_hold_half_the_state_each_and_give_the_single_process_model(tiny_params, tokenized, tmp_path, single):
    # A checkpoint midway: saving gathers the shards whole (a collective), so every rank must reach it.
    fsdp = _base_stage(tiny_params, tokenized, tmp_path / "two", 2, strategy="fsdp", checkpoint_every=2)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    a, b = (json.loads((root / "base.json").read_text()) for root in (single, tmp_path / "two"))
    assert a["steps"] == b["steps"] and a["tokens"] == b["tokens"]
    assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-3)
    # Each rank holds its shard of the weights, gradients and AdamW moments: half, up to the rows
    # a dimension that does not split evenly leaves on one side.
    for part in ("parameters", "gradients", "optimizer_state"):
        assert b["memory"][f"{part}_bytes"] == pytest.approx(a["memory"][f"{part}_bytes"] / 2, rel=0.02), part
    # The saved model is whole (every weight at its full shape, the head still tied) and equals the
    # single-process one up to the same noise.
    one, two = (GPT2LMHeadModel.from_pretrained(root / "model") for root in (single, tmp_path / "two"))
    assert two.lm_head.weight is two.transformer.wte.weight
    for (name, p), q in zip(one.state_dict().items(), two.state_dict().values()):
        assert p.shape == q.shape, name
        torch.testing.assert_close(q, p, atol=2e-3, rtol=0, msg=name)

