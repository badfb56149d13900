import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptpipe.config import LoopConfig
from stage_runs import run_base
from gptpipe.train.loop import scheduled_lr
from tiny import run_tiny as _run

WORKER = Path(__file__).parent / "train_worker.py"


def test_a_short_run_lowers_the_test_loss(tiny_params, tokenized, tmp_path):
    _, state, metrics = _run(tiny_params, tokenized, tmp_path, tiny_params.train)
    first, last = state.rows[0], state.rows[-1]
    assert last["test_loss"] < first["test_loss"] - 1.0
    assert last["train_loss"] < first["train_loss"] - 1.0
    assert [r["step"] for r in state.rows] == [0, 6, 12]
    assert metrics["tokens"] == last["tokens"] > 0 and metrics["flops"] > 0
    # The loop keeps it: the stage discards it once its outputs are in place (test_checkpoint.py).
    assert (tmp_path / "ckpt.pt").exists()


def test_skipping_the_start_evaluation_changes_no_weight(tiny_params, tokenized, tmp_path):
    # The compute-optimal sweep reads only each run's final loss; evaluating is not training.
    full, with_start, _ = _run(tiny_params, tokenized, tmp_path / "a", tiny_params.train)
    lean, without, _ = _run(tiny_params, tokenized, tmp_path / "b", tiny_params.train, evaluate_start=False)
    assert [r["step"] for r in without.rows] == [6, 12]
    assert without.rows == with_start.rows[1:]
    for (name, p), q in zip(full.named_parameters(), lean.parameters()):
        assert torch.equal(p, q), name


def test_one_batch_of_8_equals_8_accumulated_batches_of_1(tiny_params, tokenized, tmp_path):
    # SGD: its update is linear in the gradient. (Adam divides by sqrt(v), which turns float noise in
    # a gradient that is zero in exact arithmetic, e.g. the attention key bias, into a full step.)
    common = {"max_steps": 3, "optimizer": "sgd", "lr": 0.5}
    whole = tiny_params.train.model_copy(update={**common, "micro_batch_size": 8})
    split = tiny_params.train.model_copy(update={**common, "micro_batch_size": 1})
    a, *_ = _run(tiny_params, tokenized, tmp_path / "a", whole)
    b, *_ = _run(tiny_params, tokenized, tmp_path / "b", split)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=2e-6), name


def test_two_runs_with_the_same_params_give_identical_metrics(tiny_params, tokenized, tmp_path):
    results = []
    for name in ("one", "two"):
        out = tmp_path / name
        metrics = run_base(tiny_params, tokenized, out / "model", out / "base.json", out / "plots")
        results.append((metrics, (out / "plots" / "loss.tsv").read_text()))
    (m1, series1), (m2, series2) = results
    timing = {"tokens_per_s", "mfu", "memory"}  # wall-clock figures differ run to run
    assert {k: v for k, v in m1.items() if k not in timing} == {k: v for k, v in m2.items() if k not in timing}
    assert series1 == series2
    assert m1["test_loss"] < 10.0  # it trained (ln 50257 = 10.8 at init)


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = LoopConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert scheduled_lr(cfg, 0) == pytest.approx(0.1)
    assert scheduled_lr(cfg, 9) == pytest.approx(1.0)
    assert scheduled_lr(cfg, 60) == pytest.approx(0.55)
    assert scheduled_lr(cfg, 110) == pytest.approx(0.1)


def _worker(tokenized, out, checkpoint, *extra, launcher=(sys.executable,)):
    cmd = [*launcher, str(WORKER), "--tokenized", str(tokenized), "--out", str(out), "--checkpoint", str(checkpoint), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("dtype", ["float32", "float16"])  # fp16: the loss scale is resumed too
def test_a_killed_run_resumes_to_the_uninterrupted_result(tokenized, tmp_path, dtype):
    whole = _worker(tokenized, tmp_path / "whole.json", tmp_path / "whole.ckpt", "--dtype", dtype)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = _worker(tokenized, tmp_path / "resumed.json", tmp_path / "resumed.ckpt", "--kill-at-step", "10",
                     "--dtype", dtype)
    assert killed.returncode == -9  # SIGKILL: no cleanup ran
    assert (tmp_path / "resumed.ckpt").exists() and not (tmp_path / "resumed.json").exists()
    resumed = _worker(tokenized, tmp_path / "resumed.json", tmp_path / "resumed.ckpt", "--dtype", dtype)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr and "at step 8" in resumed.stderr
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "resumed"))
    assert a["rows"] == b["rows"]
    assert a["rows"][-1]["test_loss"] < a["rows"][0]["test_loss"]  # fp16 with loss scaling learns too
    wa, wb = (torch.load(tmp_path / f"{n}.pt") for n in ("whole", "resumed"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(processes: int = 2) -> tuple[str, ...]:
    return (sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
            f"--master_port={_free_port()}", "--master_addr=127.0.0.1")


def test_ddp_with_two_processes_gives_the_single_process_update(tokenized, tmp_path):
    # Two micro-batches of 4 per step: one process accumulates both, two DDP ranks take one each.
    # SGD, whose update is linear in the gradient (see the accumulation test for why not Adam).
    args = ("--micro-batch-size", "4", "--optimizer", "sgd", "--lr", "0.5")
    single = _worker(tokenized, tmp_path / "single.json", tmp_path / "s.ckpt", *args)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = _worker(tokenized, tmp_path / "ddp.json", tmp_path / "d.ckpt", *args, launcher=_torchrun())
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    wa, wb = (torch.load(tmp_path / f"{n}.pt") for n in ("single", "ddp"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("single", "ddp"))
    for ra, rb in zip(a["rows"], b["rows"]):
        assert ra["test_loss"] == pytest.approx(rb["test_loss"], abs=1e-4)


def test_a_killed_sharded_run_resumes_to_the_uninterrupted_result(tokenized, tmp_path):
    # FSDP: the checkpoint is every rank's shards gathered whole, and a resume scatters them back.
    args = ("--micro-batch-size", "4", "--strategy", "fsdp")
    whole = _worker(tokenized, tmp_path / "whole.json", tmp_path / "whole.ckpt", *args, launcher=_torchrun())
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _worker(tokenized, tmp_path / "resumed.json", tmp_path / "resumed.ckpt", *args, "--kill-at-step", "10",
                     launcher=_torchrun())
    assert killed.returncode != 0 and not (tmp_path / "resumed.json").exists()
    assert (tmp_path / "resumed.ckpt").exists()
    resumed = _worker(tokenized, tmp_path / "resumed.json", tmp_path / "resumed.ckpt", *args, launcher=_torchrun())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "at step 8" in resumed.stderr
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "resumed"))
    assert a["rows"] == b["rows"]
    assert a["rows"][-1]["test_loss"] < a["rows"][0]["test_loss"]
    wa, wb = (torch.load(tmp_path / f"{n}.pt") for n in ("whole", "resumed"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_step_ddp_cannot_share_is_one_user_error_naming_the_fix():
    from gptpipe.errors import UserError
    from gptpipe.train.loop import _check_divisible
    from gptpipe.train.runtime import Runtime

    runtime = Runtime(torch.device("cpu"), None, False, 2e11, rank=0, world_size=2)
    with pytest.raises(UserError, match=r"1 micro-batches per step cannot be shared by 2 processes.*multiple of 2"):
        _check_divisible(LoopConfig(batch_size=16, micro_batch_size=16), runtime)
    _check_divisible(LoopConfig(batch_size=16, micro_batch_size=8), runtime)  # 2 micro-batches: one each
