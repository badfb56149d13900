"""Checkpoints that cannot run code or cross code versions, kept until the outputs are in place, and
temp folders of a killed save cleared."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch

from gptpipe.config import LoopConfig
from gptpipe.errors import UserError
from gptpipe.files import atomic_path, clear_stale_temps
from gptpipe.train import checkpoint
from gptpipe.train.checkpoint import load_checkpoint, run_key
from gptpipe.train.loop import RunState
from stage_runs import run_base


class Planted:
    """Anything a pickle can rebuild; a weights-only load must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo planted",))


def test_a_checkpoint_holding_code_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    with open(path, "wb") as handle:
        pickle.dump({"objective": Planted()}, handle)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(UserError, match=r"ckpt.pt: not a checkpoint this run can resume \(UnpicklingError") as err:
        load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1), RunState())
    assert "\n" not in str(err.value) and f"rm {path}" in str(err.value)
    assert path.exists()  # left for the user to look at, never run


def test_the_fp16_loss_scale_survives_a_checkpoint_and_fp32_saves_none(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(torch.ones(1, 2)).sum())  # the scale starts lazily, at its first use
    scaler.update(new_scale=123.0)  # as after overflows halved it
    checkpoint.save_checkpoint(tmp_path / "fp16.pt", model, optimizer, RunState(), scaler)
    resumed = torch.amp.GradScaler("cpu")
    assert load_checkpoint(tmp_path / "fp16.pt", model, optimizer, RunState(), resumed)
    assert resumed.get_scale() == 123.0
    checkpoint.save_checkpoint(tmp_path / "fp32.pt", model, optimizer, RunState(), torch.amp.GradScaler("cpu", enabled=False))
    assert "scaler" not in torch.load(tmp_path / "fp32.pt", weights_only=True)


def test_a_truncated_checkpoint_is_one_line_too(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = torch.nn.Linear(2, 2)
    torch.save({"objective": model.state_dict()}, path)
    path.write_bytes(path.read_bytes()[:40])  # a kill mid-write without the atomic rename
    with pytest.raises(UserError, match="not a checkpoint this run can resume"):
        load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1), RunState())


def test_the_run_key_changes_with_the_code_the_config_and_the_inputs(tmp_path, monkeypatch):
    library = tmp_path / "lib"
    library.mkdir()
    (library / "loop.py").write_text("x = 1\n")
    data = tmp_path / "train.arrow"
    data.write_bytes(b"abc")
    monkeypatch.setattr(checkpoint, "LIBRARY", library)
    key = run_key("sft", [LoopConfig()], [data])
    assert run_key("sft", [LoopConfig()], [data]) == key
    assert run_key("sft", [LoopConfig(lr=0.1)], [data]) != key
    data.write_bytes(b"abd")
    assert run_key("sft", [LoopConfig()], [data]) != key
    data.write_bytes(b"abc")
    (library / "loop.py").write_text("x = 2\n")
    assert run_key("sft", [LoopConfig()], [data]) != key


def test_a_stage_discards_its_checkpoint_only_with_its_outputs_in_place(tiny_params, tokenized, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kept = []
    real_save = checkpoint.discard

    def discard(path):
        kept.append((path.exists(), (tmp_path / "base" / "model.safetensors").is_file()))
        real_save(path)

    import stages.base

    monkeypatch.setattr(stages.base, "discard", discard)
    run_base(tiny_params, tokenized, tmp_path / "base", tmp_path / "base.json", tmp_path / "plots")
    assert kept == [(True, True)]  # the checkpoint was still there when the model already was
    assert not list((tmp_path / ".gptpipe" / "checkpoints").glob("base-*.pt"))


def test_temp_folders_of_a_killed_writer_are_cleared(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".base.tmp-{int(dead.stdout)}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    alive = tmp_path / f".base.tmp-{os.getpid()}-other"  # not a pid suffix: left alone
    alive.mkdir()
    assert clear_stale_temps(tmp_path / "base") == [stale]
    assert not stale.exists() and alive.exists()
    with atomic_path(tmp_path / "base") as tmp:
        tmp.mkdir()
    assert (tmp_path / "base").is_dir()


@pytest.mark.parametrize("killed_at_rename", [1, 2])
def test_a_folder_output_killed_mid_swap_comes_back_whole(tmp_path, killed_at_rename):
    # A folder replaces a folder in two renames (the old one aside, the new one in). SIGKILL before
    # either: the old output is in place, or waits aside and the next write (or clear) puts it back.
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights").write_text("old")
    child = f"""
import os, signal
from gptpipe.files import atomic_path
calls = 0
real = os.replace
def replace(*args):
    global calls
    calls += 1
    if calls == {killed_at_rename}:
        os.kill(os.getpid(), signal.SIGKILL)
    real(*args)
os.replace = replace
with atomic_path({str(out)!r}) as tmp:
    tmp.mkdir()
    (tmp / "weights").write_text("new")
"""
    assert subprocess.run([sys.executable, "-c", child]).returncode == -9
    clear_stale_temps(out)
    assert (out / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # nothing left beside it


def test_a_gpu_checkpoint_carries_each_devices_generator(tmp_path, monkeypatch):
    # No GPU here: a stand-in torch.cuda with two devices whose generators are plain byte tensors,
    # so the save/restore plumbing is what is tested (the real calls have the same signatures).
    generators = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [g.clone() for g in generators])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: restored.__setitem__(index, state))
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint.save_checkpoint(tmp_path / "ckpt.pt", model, optimizer, RunState())
    generators[0].fill_(9)  # the device's generator moves on after the save
    assert load_checkpoint(tmp_path / "ckpt.pt", model, optimizer, RunState())
    assert [restored[i].tolist() for i in range(2)] == [[1, 2], [3, 4]]
