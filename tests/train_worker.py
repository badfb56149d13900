"""A tiny training run in its own process, for the tests that need one: resume after a real kill,
and DDP under torchrun. Writes the eval rows and the final weights of rank 0 to --out."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny import TINY  # noqa: E402

from gptpipe.data.batches import StepPlan, eval_sample, lm_examples  # noqa: E402
from gptpipe.config import parse_params  # noqa: E402
from gptpipe.train.flops import ModelShape  # noqa: E402
from gptpipe.models.gpt2 import build_scratch  # noqa: E402
from gptpipe.train.objectives import LanguageModelling  # noqa: E402
from gptpipe.data.tokenizer import read_arrow  # noqa: E402
from gptpipe.train.loop import train  # noqa: E402
from gptpipe.train.runtime import make_runtime  # noqa: E402
from gptpipe.train.sharding import full_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenized", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--arch", default="gpt2")
    parser.add_argument("--n-kv-head", type=int, default=None)
    args = parser.parse_args()

    train_overrides = {"micro_batch_size": args.micro_batch_size, "optimizer": args.optimizer, "lr": args.lr}
    # Every training section's step must split across the processes, not only the one run here.
    others = {s: {**TINY[s], "micro_batch_size": args.micro_batch_size} for s in ("base", "reward", "dpo")}
    overrides = {**TINY, **others, "train": {**TINY["train"], **train_overrides}, "shared": {
        "dtype": args.dtype, "strategy": args.strategy, "processes": int(os.environ.get("WORLD_SIZE", 1))}}
    overrides["model"] = {**TINY.get("model", {}), "arch": args.arch, "n_kv_head": args.n_kv_head}
    params = parse_params(overrides)
    cfg, seed = params.train, params.shared.seed
    data = {s: lm_examples(read_arrow(args.tokenized / f"{s}.arrow"), "response", ("chosen",)) for s in ("train", "test")}
    plan = StepPlan(data["train"], cfg.batch_size, cfg.micro_batch_size, seed)
    if args.kill_at_step is not None:
        _die_at(plan, args.kill_at_step)
    model = build_scratch(params.model, seed)
    runtime = make_runtime(params.shared)
    state, metrics = train(
        LanguageModelling(model), plan, {n: eval_sample(e, cfg.eval_samples, seed) for n, e in data.items()},
        cfg, runtime, seed=seed, checkpoint=args.checkpoint, shape=ModelShape.from_config(model.config),
    )
    with full_weights(model):  # FSDP: the whole weights, gathered by every rank
        if runtime.rank == 0:
            torch.save(model.state_dict(), args.out.with_suffix(".pt"))
            args.out.write_text(json.dumps({"rows": state.rows, "metrics": metrics}))


def _die_at(plan: StepPlan, step: int) -> None:
    """SIGKILL this process when the loop asks for that step's batches: no cleanup, as a real kill."""
    original = plan.micro_batches

    def micro_batches(s: int):
        if s == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(s)

    plan.micro_batches = micro_batches


if __name__ == "__main__":
    main()
