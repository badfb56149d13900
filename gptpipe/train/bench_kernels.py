"""What the portable CPU kernels cost on this host: SFT training steps of the configured model under
GPTPIPE_KERNELS=portable and =native, each in a fresh process (ATen and MKL read their settings
once, at the first tensor operation), alternating, so that a host whose load drifts shares the
drift between the two. Prints tokens/s per run and the median ratio.

The steps are the sft stage's loop (gptpipe.train.loop.train): the configured model shape built from
scratch, SFT's objective on the tokenized train split, AdamW, the StepPlan's batches. Timed after
WARMUP_STEPS (the optimizer state and the allocator's pools are made there)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from gptpipe.kernels import ENV, PORTABLE

WARMUP_STEPS = 2


def measure(params_path: Path, tokenized: Path, steps: int, overrides: dict | None = None) -> dict:
    """One side, in this process: tokens/s of `steps` SFT steps of the real training loop (timed by
    the step plan it draws from, as `gptpipe bench gpu` times it) and the kernels that ran them.
    `overrides`: dotted params keys set over the file's (`gptpipe bench arch`'s model shapes)."""
    from gptpipe.config import SharedConfig, load_params
    from gptpipe.data.batches import lm_examples
    from gptpipe.data.tokenizer import read_arrow
    from gptpipe.kernels import in_force
    from gptpipe.models.gpt2 import build_scratch
    from gptpipe.train.flops import ModelShape, count_params
    from gptpipe.train.gpu_profile import TimedPlan, loop_config, train_plan
    from gptpipe.train.objectives import LanguageModelling
    from gptpipe.train.runtime import make_runtime

    params = load_params(params_path, overrides)
    seed = params.shared.seed
    runtime = make_runtime(SharedConfig(device="cpu"))
    cfg = loop_config(params.train.batch_size, WARMUP_STEPS + steps + 1).model_copy(  # +1: its start ends the last timed step
        update={"micro_batch_size": params.train.micro_batch_size})
    model = build_scratch(params.model, seed)
    shape = ModelShape.from_config(model.config)
    objective = LanguageModelling(model)
    plan = TimedPlan(lm_examples(read_arrow(tokenized / "train.arrow"), "response", ("chosen",)), cfg, seed, runtime.device)
    train_plan(objective, plan, cfg, runtime, seed, shape)
    timed = range(WARMUP_STEPS, WARMUP_STEPS + steps)
    tokens, model_flops = plan.work(timed, objective.collate, shape)
    seconds = plan.starts[timed.stop] - plan.starts[timed.start]
    ran = {"arch": shape.arch, "kv_heads": shape.kv_heads, "ffn": shape.ffw_size,
           "non_embedding_params": count_params(shape, include_embeddings=False)}  # read from the model built
    return {**in_force(), **ran, "tokens_per_s": tokens / seconds, "flops_per_s": model_flops / seconds}


def compare(params_path: Path, tokenized: Path, steps: int, rounds: int) -> dict:
    """Both modes, `rounds` fresh processes each, alternating; prints each run and the ratio."""
    runs: dict[str, list[float]] = {"portable": [], "native": []}
    for _ in range(rounds):
        for mode in runs:
            row = _run_side(mode, params_path, tokenized, steps)
            runs[mode].append(row["tokens_per_s"])
            print(f"{mode:8s} ATen {row['aten']:7s} MKL {row['mkl_branch']:10s} {row['tokens_per_s']:8.0f} tokens/s", flush=True)
    ratio = statistics.median(n / p for n, p in zip(runs["native"], runs["portable"], strict=True))
    print(f"native / portable: {ratio:.2f}x (median of {rounds} alternating pairs; cpu: {_cpu_name()})")
    return {"runs": runs, "native_over_portable": ratio}


def _run_side(mode: str, params_path: Path, tokenized: Path, steps: int) -> dict:
    # The portable variables are dropped for a native side: a parent that pinned them (every gptpipe
    # process does, at import) would otherwise hand them down.
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE}
    env[ENV] = mode
    return measure_in_fresh_process(params_path, tokenized, steps, env=env, side=mode)


def measure_in_fresh_process(params_path: Path, tokenized: Path, steps: int, *, env: dict[str, str] | None = None,
                             overrides: dict | None = None, side: str = "") -> dict:
    """`measure` in a new Python: the kernels' settings, read once per process, and the allocator's
    pools start fresh for every side."""
    code = ("import json, sys; from pathlib import Path; from gptpipe.train.bench_kernels import measure; "
            "print(json.dumps(measure(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]))))")
    out = subprocess.run([sys.executable, "-c", code, str(params_path), str(tokenized), str(steps), json.dumps(overrides or {})],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the {side} side failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"
