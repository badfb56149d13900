"""The CPU kernels gptpipe pins (gptpipe/kernels.py), read back from ATen and MKL in fresh processes.

Each check runs in a subprocess: ATen and MKL choose their kernels once, at a process's first
operation, and this test process has already chosen (the suite runs native, tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pathlib import Path

import pytest

from gptpipe import kernels
from gptpipe.errors import UserError

REPO = Path(__file__).resolve().parents[1]

# A GPT-2 step's gradients, hashed: the bytes a training run is made of.
STEP = """
import hashlib, json, torch
from gptpipe import kernels
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=128, n_head=4, n_positions=64))
ids = torch.randint(0, 50257, (4, 64))
model(ids, labels=ids).loss.backward()
digest = hashlib.md5(b"".join(p.grad.numpy().tobytes() for p in model.parameters())).hexdigest()
print(json.dumps({**kernels.in_force(), "grads": digest}))
"""


def _fresh(code: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in (kernels.ENV, *kernels.PORTABLE, "MKL_ENABLE_INSTRUCTIONS")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_portable_is_the_default_and_pins_aten_and_mkl():
    state = _fresh("import json, gptpipe; from gptpipe import kernels; print(json.dumps(kernels.in_force()))")
    assert state == {"mode": "portable", "aten": "AVX2", "mkl_branch": "COMPATIBLE"}


def test_native_leaves_the_host_kernels_and_a_users_own_setting_is_kept():
    host = _fresh("import json, torch; print(json.dumps({'aten': torch.backends.cpu.get_cpu_capability()}))")
    native = _fresh("import json, gptpipe; from gptpipe import kernels; print(json.dumps(kernels.in_force()))",
                    GPTPIPE_KERNELS="native")
    assert native == {"mode": "native", "aten": host["aten"], "mkl_branch": "OFF"}
    own = _fresh("import json, gptpipe; from gptpipe import kernels; print(json.dumps(kernels.in_force()))",
                 ATEN_CPU_CAPABILITY="default")
    assert own["aten"] == "DEFAULT" and own["mkl_branch"] == "COMPATIBLE"


def test_portable_gradients_do_not_depend_on_the_isa_mkl_is_offered():
    # An older host offers MKL fewer instructions; MKL_ENABLE_INSTRUCTIONS plays that host here. The
    # COMPATIBLE branch does not look at them, so the bytes agree (natively they do not: MKL then
    # runs other kernels: with MKL_CBWR=OFF the two digests differ, checked when this was written).
    here = _fresh(STEP)
    older = _fresh(STEP, MKL_ENABLE_INSTRUCTIONS="SSE4_2")
    assert here["mkl_branch"] == older["mkl_branch"] == "COMPATIBLE"
    assert here["grads"] == older["grads"]


def test_a_misspelt_mode_is_one_line_naming_the_variable_and_its_values():
    with pytest.raises(UserError, match=r"GPTPIPE_KERNELS='fast': must be one of portable, native"):
        kernels.mode({"GPTPIPE_KERNELS": "fast"})
    assert kernels.pin({"GPTPIPE_KERNELS": "fast"}) == {}  # nothing set: the stage's first line fails


def test_a_stage_names_its_kernels_first():
    out = subprocess.run([sys.executable, "-m", "stages.download", "--out", "/nonexistent/raw", "--metrics", "/dev/null"],
                         env={**os.environ, "GPTPIPE_KERNELS": "fast"}, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: GPTPIPE_KERNELS='fast': must be one of portable, native (portable: the same bytes on every "
        "x86-64 host with AVX2; native: the host's fastest kernels) [the last good outputs: `gptpipe restore download`]"]


def test_the_kernel_bench_runs_each_mode_on_its_own_kernels(tiny_params, tokenized, tmp_path, monkeypatch, capsys):
    # The bench's two sides differ only in the kernels: a native side that inherited the portable
    # variables from its parent (every gptpipe process sets them) would measure the pin against itself.
    from gptpipe.train import bench_kernels

    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"model": tiny_params.model.model_dump(), "tokenize": {"max_length": 128},
                                  "train": {"batch_size": 4, "micro_batch_size": 4}}))
    monkeypatch.setenv(kernels.ENV, "portable")
    for name, value in kernels.PORTABLE.items():
        monkeypatch.setenv(name, value)
    result = bench_kernels.compare(params, tokenized, steps=1, rounds=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("portable") and "MKL COMPATIBLE" in lines[0] and "ATen AVX2" in lines[0]
    assert lines[1].startswith("native") and "MKL COMPATIBLE" not in lines[1]
    assert all(rate > 0 for runs in result["runs"].values() for rate in runs) and len(lines) == 3
