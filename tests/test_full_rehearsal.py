"""The full preset rehearsed end to end, as a user without the hub runs it: `gptpipe preset full`,
the hub assets swapped for local copies of the same classes (GPT-2 `save_pretrained` folders, a
DeBERTa-v2 judge), the real HH split in ../shared, then `gptpipe repro` through every stage to the
report. Shrunk for CI: tiny shapes, two steps a stage, fp32 and no torch.compile (bf16 is emulated
on these CPUs, ~6x slower; tests/test_compile.py checks bf16 losses and compiled graphs, and
`gptpipe bench gpu` measures both on a GPU). Everything else is the preset's: pretrained init, the
hub judge's backend, the sweep of scratch shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import GPT2Config, GPT2LMHeadModel

from dvc_project import ALL_STAGES, REPO, copy_tracked, run

HH = REPO.parent / "shared" / "data" / "hh-rlhf"

STEPS = {"max_steps": 2, "warmup_steps": 1, "eval_every": 1, "eval_samples": 8, "checkpoint_every": 1,
         "batch_size": 4, "micro_batch_size": 2}


def _gpt2_folder(root: Path, n_layer: int, n_embd: int) -> str:
    torch.manual_seed(0)
    folder = root / f"gpt2-{n_layer}x{n_embd}"
    GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=2, n_positions=1024)).save_pretrained(folder)
    return str(folder)


def _stand_ins(params: dict, models: Path, judge: Path) -> dict:
    params["data"].update(source="dir", dir=str(HH), division="harmless-base", max_pairs=48)
    params["tokenize"]["max_length"] = 128
    params["shared"].update(device="cpu", compile=False, dtype="float32")
    params["model"]["name"] = _gpt2_folder(models, 1, 32)
    for section in ("train", "dpo"):
        params[section].update(STEPS)
    params["reward"].update(name=str(judge), hf_max_length=128)
    params["score"]["batch_size"] = 8
    params["generate"].update(n_prompts=4, max_new_tokens=4, batch_size=4)
    # The preset's kind of sweep (scratch shapes, every FLOP counted), shrunk.
    assert all("x" in m for m in params["scaling"]["models"])
    params["scaling"].update(models=["1x16", "1x32", "1x48"], head_dim=16, budgets=[2e9, 6e9], eval_samples=8, batch_size=4)
    return params


@pytest.mark.skipif(not HH.is_dir(), reason="the real HH split beside the checkout (../shared) is absent")
def test_the_full_preset_runs_to_the_report_with_local_stand_ins(tmp_path_factory, tiny_classifier):
    root = tmp_path_factory.mktemp("full")
    copy_tracked(root)
    run(root, "git", "init", "-q", "-b", "main")
    run(root, "gptpipe", "preset", "full")
    preset = yaml.safe_load((root / "params.yaml").read_text())
    assert preset["reward"]["backend"] == "hf" and preset["shared"]["dtype"] == "bfloat16"
    params = _stand_ins(preset, tmp_path_factory.mktemp("models"), tiny_classifier)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "full preset with local stand-ins")

    result = run(root, "gptpipe", "repro")
    for stage in ALL_STAGES:
        assert f"Running stage '{stage}'" in result.stdout, stage
    assert (root / "report/index.html").is_file()
    assert json.loads((root / "metrics/reward.json").read_text())["backend"] == "hf"
    sft = json.loads((root / "metrics/sft.json").read_text())
    assert sft["steps"] == 2 and sft["test_loss"] > 0
    table = (root / "plots/scaling/runs.csv").read_text().splitlines()
    assert len(table) == 1 + 3 * 2  # every shape at every budget
    assert json.loads((root / "metrics/scaling.json").read_text())["regime"].startswith("full study: scratch GPT-2 shapes")
    assert "up to date" in run(root, "dvc", "status").stdout
