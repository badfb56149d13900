"""The one training loop: base pretraining, SFT, reward models and DPO differ only in the objective
module (its loss and its `collate`) and the examples fed to it.

Read top to bottom, `train()` is the whole run: resume or start, then per step: schedule, evaluate and
checkpoint when due, accumulate gradients over the step's micro-batches, clip, update. Everything below
the marked line of a step is diagnostics.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from gptpipe.train import flops
from gptpipe.data.batches import StepPlan
from gptpipe.config import SharedConfig, TrainConfig
from gptpipe.files import atomic_path
from gptpipe.train.optim import build_optimizer, learning_rate, memory_split, theoretical_state_bytes


@dataclass
class Runtime:
    """Where and how a run executes: device, autocast, compile, and its DDP rank."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    compile: bool
    peak_flops: float
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class RunState:
    step: int = 0
    tokens: int = 0
    flops: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per evaluation


def make_runtime(shared: SharedConfig) -> Runtime:
    """Resolve device, dtype and DDP; under torchrun each process joins the group here."""
    if shared.device == "auto":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device_type = shared.device
    if device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("shared.device: cuda is not available here; use cpu or auto")
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    device = torch.device(device_type, int(os.environ.get("LOCAL_RANK", 0))) if device_type == "cuda" else torch.device("cpu")
    peak = shared.peak_flops or flops.default_peak_flops(device_type, shared.dtype)
    autocast = torch.bfloat16 if shared.dtype == "bfloat16" else None
    return Runtime(device, autocast, shared.compile, peak, rank, world_size)


def train(
    objective: nn.Module,
    plan: StepPlan,
    eval_sets: dict[str, Sequence],
    cfg: TrainConfig,
    runtime: Runtime,
    *,
    seed: int,
    checkpoint: Path,
    shape: flops.ModelShape,
    desc: str = "train",
) -> tuple[RunState, dict[str, Any]]:
    """Train `objective` for cfg.max_steps; returns the run state (with its eval rows) and metrics."""
    _check_divisible(cfg, runtime)
    torch.manual_seed(seed)
    objective.to(runtime.device)
    optimizer = build_optimizer(objective.parameters(), cfg)
    state = RunState()
    load_checkpoint(checkpoint, objective, optimizer, state)
    net = _wrap(objective, runtime)
    timer = _Timer()
    memory: dict[str, int] = {}
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc=desc, disable=not runtime.is_main)
    while True:
        last = state.step == cfg.max_steps
        lr = scheduled_lr(cfg, state.step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if (state.step % cfg.eval_every == 0 or last) and not _logged(state):
            figures = {
                f"{name}_{key}": value
                for name, examples in eval_sets.items()
                for key, value in evaluate(objective, examples, cfg, runtime).items()
            }
            state.rows.append(_row(state, lr, figures))
            bar.set_postfix({k: f"{v:.3f}" for k, v in figures.items() if k.endswith("_loss")})
        if last:
            break
        if state.step % cfg.checkpoint_every == 0 and state.step > 0 and runtime.is_main:
            save_checkpoint(checkpoint, objective, optimizer, state)
        # -- the step --
        timer.start()
        micro_batches = [objective.collate(m) for m in plan.micro_batches(state.step)]
        step_weight = sum(b.weight for b in micro_batches)  # the loss is a mean over the whole step
        mine = micro_batches[runtime.rank :: runtime.world_size]
        for i, batch in enumerate(mine):
            sync = i == len(mine) - 1  # DDP all-reduces gradients on the step's last micro-batch only
            with _no_sync(net, sync), autocast(runtime):
                loss_sum, _ = net(batch.to(runtime.device))
            # DDP averages gradients over ranks; scaling by world_size makes that a sum.
            (loss_sum * runtime.world_size / step_weight).backward()
        grad_norm = _clip(objective, cfg.grad_clip)
        optimizer.step()
        if not memory:  # the first step is when gradients and optimizer state all exist
            memory = memory_split(objective, optimizer)
        optimizer.zero_grad(set_to_none=True)
        # -- diagnostics only below this line --
        state.tokens += sum(b.n_tokens for b in micro_batches)
        step_flops = sum(flops.step_flops(shape, b.seq_lens, b.head_positions) for b in micro_batches)
        state.flops += step_flops
        timer.stop(sum(b.n_tokens for b in micro_batches), step_flops)
        state.step += 1
        bar.update(1)
        bar.set_postfix(grad_norm=f"{grad_norm:.2f}", tok_s=f"{timer.tokens_per_s:.0f}")
    bar.close()
    metrics = _summary(state, cfg, objective, optimizer, memory, timer, runtime)
    if runtime.is_main and checkpoint.exists():
        checkpoint.unlink()  # finished: the model is saved by the caller as a DVC output
    return state, metrics


def scheduled_lr(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio at max_steps."""
    peak = learning_rate(cfg)
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    floor = peak * cfg.min_lr_ratio
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def evaluate(objective: nn.Module, examples: Sequence, cfg: TrainConfig, runtime: Runtime) -> dict[str, float]:
    """Mean loss (per counted token, or per pair) and the objective's stats over a fixed sample."""
    was_training = objective.training
    objective.eval()
    sums: dict[str, float] = {"loss": 0.0}
    weight = 0
    for start in range(0, len(examples), cfg.micro_batch_size):
        batch = objective.collate(examples[start : start + cfg.micro_batch_size])
        with autocast(runtime):
            loss_sum, stats = objective(batch.to(runtime.device))
        for key, value in {"loss": loss_sum, **stats}.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        weight += batch.weight
    objective.train(was_training)
    return {key: total / weight for key, total in sums.items()}


def estimate_loss(objective: nn.Module, examples: Sequence, cfg: TrainConfig, runtime: Runtime) -> float:
    return evaluate(objective, examples, cfg, runtime)["loss"]


# -- checkpoints: model, optimizer, step, RNG and the log so far; temp file, then rename --------


def save_checkpoint(path: Path, objective: nn.Module, optimizer: torch.optim.Optimizer, state: RunState) -> None:
    payload = {
        "objective": objective.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": state,
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, objective: nn.Module, optimizer: torch.optim.Optimizer, state: RunState) -> bool:
    """Resume from `path` if it exists (its name carries the hash of params and inputs)."""
    if not path.exists():
        return False
    payload = torch.load(path, weights_only=False)
    objective.load_state_dict(payload["objective"])
    optimizer.load_state_dict(payload["optimizer"])
    vars(state).update(vars(payload["state"]))
    torch.set_rng_state(payload["torch_rng"])
    random.setstate(payload["python_rng"])
    tqdm.write(f"resuming from {path} at step {state.step}", file=sys.stderr)
    return True


# -- helpers ------------------------------------------------------------------------------------


def _check_divisible(cfg: TrainConfig, runtime: Runtime) -> None:
    if cfg.grad_accum_steps % runtime.world_size:
        raise ValueError(
            f"batch_size/micro_batch_size = {cfg.grad_accum_steps} micro-batches per step cannot "
            f"be shared by {runtime.world_size} DDP processes; make it a multiple"
        )


def _wrap(objective: nn.Module, runtime: Runtime) -> nn.Module:
    net = objective
    if runtime.world_size > 1:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
    if runtime.compile:
        net = torch.compile(net)
    return net


def _no_sync(net: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    inner = getattr(net, "_orig_mod", net)
    if sync or not isinstance(inner, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return inner.no_sync()


def autocast(runtime: Runtime) -> contextlib.AbstractContextManager:
    if runtime.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(runtime.device.type, dtype=runtime.autocast_dtype)


def _clip(objective: nn.Module, max_norm: float) -> float:
    params = [p for p in objective.parameters() if p.grad is not None]
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm).item()
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()


def _logged(state: RunState) -> bool:
    return bool(state.rows) and state.rows[-1]["step"] == state.step


ROW_KEYS = ("step", "tokens", "flops", "lr")


def _row(state: RunState, lr: float, figures: dict[str, float]) -> dict[str, Any]:
    return {"step": state.step, "tokens": state.tokens, "flops": state.flops, "lr": lr, **figures}


class _Timer:
    """Wall time of the training steps alone (evaluation and checkpoints excluded)."""

    def __init__(self) -> None:
        self.seconds, self.tokens, self.flops, self._t0 = 0.0, 0, 0.0, 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self, tokens: int, flops_done: float) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.tokens += tokens
        self.flops += flops_done

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _summary(
    state: RunState,
    cfg: TrainConfig,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    memory: dict[str, int],
    timer: _Timer,
    runtime: Runtime,
) -> dict[str, Any]:
    final = state.rows[-1]
    n_trainable = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    flops_per_s = timer.flops / timer.seconds if timer.seconds else 0.0
    return {
        "optimizer": cfg.optimizer,
        "lr": learning_rate(cfg),
        "steps": state.step,
        "tokens": state.tokens,
        "flops": state.flops,
        **{k: v for k, v in final.items() if k not in ROW_KEYS},
        "trainable_parameters": n_trainable,
        "tokens_per_s": round(timer.tokens_per_s, 1),
        "mfu": round(flops.mfu(flops_per_s, runtime.peak_flops), 5),
        "peak_flops": runtime.peak_flops,
        "memory": _memory_report(memory, cfg, objective, runtime),
    }


def _memory_report(memory: dict[str, int], cfg: TrainConfig, objective: nn.Module, runtime: Runtime) -> dict[str, int]:
    """Measured tensor bytes beside the theory; the rest is peak process memory minus tensors."""
    if runtime.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(runtime.device)
        peak_name = "cuda_max_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        peak_name = "peak_rss"
    tensors = sum(memory.values())
    return {
        **{f"{k}_bytes": v for k, v in memory.items()},
        "optimizer_state_bytes_theory": theoretical_state_bytes(
            cfg, (p for p in objective.parameters() if p.requires_grad)
        ),
        f"{peak_name}_bytes": peak,
        "rest_bytes": max(0, peak - tensors),
    }
