"""The one training loop: base pretraining, SFT, reward models and DPO differ only in the objective
module (its loss and its `collate`) and the examples fed to it.

Read top to bottom, `train()` is the whole run: resume or start, then per step: schedule, evaluate and
checkpoint when due, accumulate gradients over the step's micro-batches, clip, update. Everything below
the marked line of a step is diagnostics.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from gptpipe.train import flops
from gptpipe.data.batches import StepPlan, pad_width
from gptpipe.config import LoopConfig
from gptpipe.errors import UserError
from gptpipe.train.runtime import Runtime, autocast, checkpoint_bodies, compile_bodies
from gptpipe.train.checkpoint import load_checkpoint, save_checkpoint
from gptpipe.train.optim import (
    build_optimizer, hidden_matrices, learning_rate, memory_split, theoretical_state_bytes,
)
from gptpipe.train.sharding import scalar, shard


@dataclass
class RunState:
    step: int = 0
    tokens: int = 0
    flops: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per evaluation


def train(
    objective: nn.Module,
    plan: StepPlan,
    eval_sets: dict[str, Sequence],
    cfg: LoopConfig,
    runtime: Runtime,
    *,
    seed: int,
    checkpoint: Path,
    shape: flops.ModelShape,
    desc: str = "train",
    evaluate_start: bool = True,
) -> tuple[RunState, dict[str, Any]]:
    """Train `objective` for cfg.max_steps; returns the run state (with its eval rows) and metrics.
    evaluate_start=False skips the step-0 evaluation (a run that reads only its final loss)."""
    _check_divisible(cfg, runtime)
    torch.manual_seed(seed)
    objective.to(runtime.device)
    if cfg.activation_checkpointing:
        checkpoint_bodies(objective)
    if runtime.sharded:  # before the optimizer, which then holds (and updates) this rank's shards only
        shard(objective)
    optimizer = build_optimizer(objective.parameters(), cfg, hidden=hidden_matrices(objective))
    # fp16 gradients underflow without loss scaling; for fp32 and bf16 the scaler passes through.
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.autocast_dtype == torch.float16)
    state = RunState()
    load_checkpoint(checkpoint, objective, optimizer, state, scaler)
    net = _wrap(objective, runtime)
    charge = flops.charge_of(objective)  # what runs per token: frozen weights, adapters, a live reference
    timer = _Timer()
    memory: dict[str, int] = {}
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc=desc, disable=not runtime.is_main)
    while True:
        last = state.step == cfg.max_steps
        lr = scheduled_lr(cfg, state.step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        due = state.step % cfg.eval_every == 0 and (state.step > 0 or evaluate_start)
        if (due or last) and not _logged(state):
            figures = {
                f"{name}_{key}": value
                for name, examples in eval_sets.items()
                for key, value in evaluate(objective, examples, cfg, runtime).items()
            }
            state.rows.append(_row(state, lr, figures))
            bar.set_postfix({k: f"{v:.3f}" for k, v in figures.items() if k.endswith("_loss")})
        if last:
            break
        if state.step % cfg.checkpoint_every == 0 and state.step > 0:
            save_checkpoint(checkpoint, objective, optimizer, state, scaler, write=runtime.is_main)
        # -- the step --
        timer.start()
        micro_batches = [_collate(objective, m, runtime) for m in plan.micro_batches(state.step)]
        step_weight = sum(b.weight for b in micro_batches)  # the loss is a mean over the whole step
        mine = micro_batches[runtime.rank :: runtime.world_size]
        for i, batch in enumerate(mine):
            sync = i == len(mine) - 1  # DDP all-reduces gradients on the step's last micro-batch only
            with _no_sync(net, sync), autocast(runtime):
                loss_sum, _ = net(batch.to(runtime.device))
            # DDP averages gradients over ranks; scaling by world_size makes that a sum.
            scaler.scale(loss_sum * runtime.world_size / step_weight).backward()
        scaler.unscale_(optimizer)  # clip the true gradients
        grad_norm = _clip(objective, cfg.grad_clip)
        scaler.step(optimizer)  # skipped where fp16 overflowed (then the scale halves)
        scaler.update()
        if not memory:  # the first step is when gradients and optimizer state all exist
            memory = memory_split(objective, optimizer)
        optimizer.zero_grad(set_to_none=True)
        # -- diagnostics only below this line --
        state.tokens += sum(b.n_tokens for b in micro_batches)
        step_flops = sum(flops.step_flops(shape, b.seq_lens, b.head_positions, charge) for b in micro_batches)
        state.flops += step_flops
        timer.stop(sum(b.n_tokens for b in micro_batches), step_flops)
        state.step += 1
        bar.update(1)
        bar.set_postfix(grad_norm=f"{grad_norm:.2f}", tok_s=f"{timer.tokens_per_s:.0f}")
    bar.close()
    metrics = _summary(state, cfg, objective, optimizer, memory, timer, runtime)
    # The checkpoint stays until the caller has its outputs in place (checkpoint.discard): a kill
    # while the model is being saved resumes from it instead of step 0.
    return state, metrics


def scheduled_lr(cfg: LoopConfig, step: int) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio at max_steps."""
    peak = learning_rate(cfg)
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    floor = peak * cfg.min_lr_ratio
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def evaluate(objective: nn.Module, examples: Sequence, cfg: LoopConfig, runtime: Runtime) -> dict[str, float]:
    """Mean loss (per counted token, or per pair) and the objective's stats over a fixed sample."""
    was_training = objective.training
    objective.eval()
    sums: dict[str, float] = {"loss": 0.0}
    weight = 0
    for start in range(0, len(examples), cfg.micro_batch_size):
        batch = _collate(objective, examples[start : start + cfg.micro_batch_size], runtime)
        with autocast(runtime):
            loss_sum, stats = objective(batch.to(runtime.device))
        for key, value in {"loss": loss_sum, **stats}.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        weight += batch.weight
    objective.train(was_training)
    return {key: total / weight for key, total in sums.items()}


def estimate_loss(objective: nn.Module, examples: Sequence, cfg: LoopConfig, runtime: Runtime) -> float:
    return evaluate(objective, examples, cfg, runtime)["loss"]


# -- helpers ------------------------------------------------------------------------------------


def _check_divisible(cfg: LoopConfig, runtime: Runtime) -> None:
    if cfg.grad_accum_steps % runtime.world_size:
        raise UserError(
            f"batch_size/micro_batch_size = {cfg.grad_accum_steps} micro-batches per step cannot "
            f"be shared by {runtime.world_size} processes; make batch_size / micro_batch_size a multiple "
            f"of {runtime.world_size} in the stage's section of params.yaml"
        )


# Compiled bodies see widths rounded up to this (see batches.pad_width): one graph for every batch.
COMPILED_WIDTH_MULTIPLE = 16


def _collate(objective: nn.Module, examples: Sequence, runtime: Runtime):
    batch = objective.collate(examples)
    return pad_width(batch, COMPILED_WIDTH_MULTIPLE) if runtime.compile else batch


def _wrap(objective: nn.Module, runtime: Runtime) -> nn.Module:
    net = objective
    # Sharded, the objective is already its own FSDP root; it syncs every micro-batch's gradients
    # (a reduce-scatter each), so that no rank ever holds the whole gradient: memory is why it shards.
    if runtime.world_size > 1 and not runtime.sharded:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
    if runtime.compile:
        compile_bodies(objective)
    return net


def _no_sync(net: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    if sync or not isinstance(net, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return net.no_sync()


def _clip(objective: nn.Module, max_norm: float) -> float:
    params = [p for p in objective.parameters() if p.grad is not None]
    if max_norm > 0:
        return scalar(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return scalar(torch.nn.utils.get_total_norm([p.grad for p in params]))


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
    cfg: LoopConfig,
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


def _memory_report(memory: dict[str, int], cfg: LoopConfig, objective: nn.Module, runtime: Runtime) -> dict[str, int]:
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
            cfg, (p for p in objective.parameters() if p.requires_grad), hidden=hidden_matrices(objective)
        ),
        f"{peak_name}_bytes": peak,
        "rest_bytes": max(0, peak - tensors),
    }
